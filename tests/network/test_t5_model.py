"""The T5 network without the fixture: config validation, dtypes, dropout, packing, sharding, losses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from personalize_t5x.trainer import models as encoder_decoder

from personalize_t5x.network import layers, t5

from .helpers import STANDARD_RULES, param_shapes, random_batch, random_params, tiny_config

CFG = tiny_config()
PARAMS = random_params(CFG, seed=1)
MODEL = encoder_decoder.EncoderDecoderModel(t5.Transformer(CFG), z_loss=1e-4)


# ---------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------
def test_config_accepts_gin_style_values_and_normalizes_them():
    cfg = t5.T5Config(vocab_size=128, dtype="bfloat16", mlp_activations=["gelu", "linear"])
    assert cfg.dtype is jnp.bfloat16
    assert cfg.mlp_activations == ("gelu", "linear")
    assert t5.T5Config(vocab_size=8, dtype=np.float32).dtype is jnp.float32
    assert hash(cfg) == hash(t5.T5Config(vocab_size=128, dtype=jnp.bfloat16, mlp_activations=("gelu", "linear")))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(vocab_size=8, emb_dim=-1), "emb_dim"),
        (dict(vocab_size=8, num_heads=2.5), "num_heads"),
        (dict(vocab_size=8, num_encoder_layers=-1), "num_encoder_layers"),
        (dict(vocab_size=8, dtype="int8"), "dtype"),
        (dict(vocab_size=8, mlp_activations=("gelu", "nope")), "nope"),
        (dict(vocab_size=8, mlp_activations=()), "mlp_activations"),
        (dict(vocab_size=8, dropout_rate=1.5), "dropout_rate"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        t5.T5Config(**kwargs)


def test_num_params_matches_the_tree():
    for cfg in (CFG, tiny_config(logits_via_embedding=True), tiny_config(mlp_activations=("relu",))):
        shapes = param_shapes(cfg)["params"]
        assert sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes)) == cfg.num_params


def test_single_activation_uses_wi_and_tied_logits_drop_logits_dense():
    flat = traverse_util.flatten_dict(param_shapes(tiny_config(mlp_activations=("relu",), logits_via_embedding=True))["params"])
    names = {"/".join(k) for k in flat}
    assert "encoder/layers_0/mlp/wi/kernel" in names
    assert not any("logits_dense" in n for n in names)


# ---------------------------------------------------------------------------
# Forward pass.
# ---------------------------------------------------------------------------
_logits = jax.jit(MODEL.compute_logits)


def test_bfloat16_activations_with_float32_params():
    cfg16 = tiny_config(dtype="bfloat16")
    model16 = encoder_decoder.EncoderDecoderModel(t5.Transformer(cfg16))
    batch = random_batch(0)
    logits16 = jax.jit(model16.compute_logits)(PARAMS, batch)
    assert logits16.dtype == jnp.float32  # logits_dense runs in float32
    logits32 = _logits(PARAMS, batch)
    weights = batch["decoder_loss_weights"][..., None]
    diff = np.abs(np.asarray(logits16) - np.asarray(logits32)) * weights
    assert np.isfinite(np.asarray(logits16)).all()
    assert diff.max() < 0.25 * np.abs(np.asarray(logits32)).max()
    # bfloat16 params are not created: init keeps float32
    shapes = param_shapes(cfg16)["params"]
    assert {s.dtype for s in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype("float32")}


def test_dropout_needs_an_rng_and_changes_the_output():
    # One layer per stack: dropout's random bits are slow to compile on CPU.
    cfg = tiny_config(dropout_rate=0.3, num_encoder_layers=1, num_decoder_layers=1)
    params = random_params(cfg, seed=2)
    model = encoder_decoder.EncoderDecoderModel(t5.Transformer(cfg))
    batch = random_batch(1)
    fn = jax.jit(model.compute_logits)
    a = np.asarray(fn(params, batch, jax.random.PRNGKey(0)))
    b = np.asarray(fn(params, batch, jax.random.PRNGKey(1)))
    c = np.asarray(fn(params, batch, jax.random.PRNGKey(0)))
    off = np.asarray(fn(params, batch))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, c)
    assert not np.allclose(off, a)
    np.testing.assert_array_equal(off, np.asarray(fn(params, batch)))


def test_packed_examples_give_the_logits_of_the_separate_examples():
    """Two examples packed into one row (segment ids) == each example alone."""
    single = random_batch(2, batch=2, inputs_len=8, targets_len=6)
    enc_len = [int((r > 0).sum()) for r in single["encoder_input_tokens"]]
    tgt_len = [int((r > 0).sum()) for r in single["decoder_target_tokens"]]
    packed = {k: np.zeros((1, 16 if k.startswith("encoder") else 12), np.int32)
              for k in ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions", "decoder_input_tokens",
                        "decoder_target_tokens", "decoder_segment_ids", "decoder_positions")}
    e = d = 0
    for i in range(2):
        n, m = enc_len[i], tgt_len[i]
        packed["encoder_input_tokens"][0, e:e + n] = single["encoder_input_tokens"][i, :n]
        packed["encoder_segment_ids"][0, e:e + n] = i + 1
        packed["encoder_positions"][0, e:e + n] = np.arange(n)
        packed["decoder_target_tokens"][0, d:d + m] = single["decoder_target_tokens"][i, :m]
        packed["decoder_input_tokens"][0, d:d + m] = single["decoder_input_tokens"][i, :m]
        packed["decoder_segment_ids"][0, d:d + m] = i + 1
        packed["decoder_positions"][0, d:d + m] = np.arange(m)
        e, d = e + n, d + m
    alone = np.asarray(jax.jit(MODEL.compute_logits)(PARAMS, single))
    together = np.asarray(jax.jit(MODEL.compute_logits)(PARAMS, packed))
    d = 0
    for i in range(2):
        m = tgt_len[i]
        np.testing.assert_allclose(together[0, d:d + m], alone[i, :m], atol=1e-4, rtol=1e-4)
        d += m


def test_packing_is_rejected_while_decoding():
    batch = random_batch(3)
    with pytest.raises(ValueError, match="packing is not supported while decoding"):
        jax.eval_shape(lambda: MODEL.module.apply(
            {"params": PARAMS}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
            batch["decoder_target_tokens"], encoder_segment_ids=np.ones_like(batch["encoder_input_tokens"]),
            decoder_segment_ids=np.ones_like(batch["decoder_target_tokens"]), decode=True,
            enable_dropout=False, mutable=["cache"]))


def test_relative_position_buckets_match_t5():
    rel = np.arange(-200, 201)
    bi = layers.relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    assert bi.min() == 0 and bi.max() == 31
    assert bi[rel == 0][0] == 0 and bi[rel == 1][0] == 17 and bi[rel == -1][0] == 1
    assert bi[rel == 7][0] == 23 and bi[rel == -200][0] == 15 and bi[rel == 200][0] == 31
    uni = layers.relative_position_bucket(rel, bidirectional=False, num_buckets=32, max_distance=128)
    assert (uni[rel > 0] == 0).all() and uni[rel == -15][0] == 15 and uni[rel == -200][0] == 31


# ---------------------------------------------------------------------------
# Sharding by logical axis rules.
# ---------------------------------------------------------------------------
def test_sharded_forward_on_a_data_model_mesh_matches_a_single_device():
    import flax
    import flax.linen as nn
    from flax.linen import partitioning as nn_partitioning
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = np.array(jax.devices()[:8])
    if devices.size < 8:
        pytest.skip("needs 8 (fake) devices; tests/conftest.py sets them up")
    mesh = Mesh(devices.reshape(4, 2), ("data", "model"))
    batch = random_batch(4, batch=4)
    axes = param_shapes(CFG)["params_axes"]
    logical_specs = nn_partitioning.get_axis_names(axes)
    param_shardings = flax.core.unfreeze(nn.logical_to_mesh_sharding(logical_specs, mesh, STANDARD_RULES))
    data_sharding = NamedSharding(mesh, PartitionSpec("data"))

    def fwd(params, batch):
        with nn.logical_axis_rules(STANDARD_RULES):
            return MODEL.compute_logits(params, batch)

    with mesh:
        params = jax.device_put(PARAMS, param_shardings)
        sharded_batch = jax.device_put(batch, data_sharding)
        logits = jax.jit(fwd, in_shardings=(param_shardings, data_sharding))(params, sharded_batch)
    # heads and mlp are split over 'model', vocab too
    q = params["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    assert q.sharding.spec == PartitionSpec(None, "model")
    np.testing.assert_allclose(np.asarray(logits), np.asarray(_logits(PARAMS, batch)), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------
# Losses.
# ---------------------------------------------------------------------------
def test_cross_entropy_gradient_matches_autodiff_of_the_plain_formula():
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 7))
    targets = jax.nn.one_hot(jnp.array([[1, 2, 3], [0, 6, 5]]), 7)

    def custom(lg):
        return encoder_decoder.cross_entropy_with_logits(lg, targets, 1e-2)[0].sum()

    def plain(lg):
        log_z = jax.scipy.special.logsumexp(lg, axis=-1)
        return (-(targets * jax.nn.log_softmax(lg)).sum(-1) + 1e-2 * log_z ** 2).sum()

    custom_value, custom_grad = jax.jit(jax.value_and_grad(custom))(logits)
    plain_value, plain_grad = jax.jit(jax.value_and_grad(plain))(logits)
    np.testing.assert_allclose(custom_value, plain_value, rtol=1e-5)
    np.testing.assert_allclose(custom_grad, plain_grad, rtol=1e-4, atol=1e-6)


def test_label_smoothing_is_zero_for_the_smoothed_target_distribution():
    vocab, smoothing = 5, 0.1
    probs = np.full(vocab, smoothing / (vocab - 1))
    probs[2] = 1 - smoothing
    logits = jnp.log(jnp.asarray(probs))[None, None]
    loss, z, weight_sum = encoder_decoder.compute_weighted_cross_entropy(
        logits, jnp.array([[2]]), label_smoothing=smoothing)
    np.testing.assert_allclose(float(loss), 0.0, atol=1e-5)
    assert float(z) == 0.0 and int(weight_sum) == 1


def test_loss_normalizing_factors():
    batch = {
        "decoder_target_tokens": np.array([[5, 6, 1, 0], [7, 1, 0, 0]]),
        "decoder_loss_weights": np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32),
    }
    lnf, w = encoder_decoder.get_loss_normalizing_factor_and_weights(None, batch)
    assert lnf is None and w is batch["decoder_loss_weights"]
    lnf, _ = encoder_decoder.get_loss_normalizing_factor_and_weights(2.0, batch)
    assert lnf == 2.0
    lnf, _ = encoder_decoder.get_loss_normalizing_factor_and_weights("num_real_target_tokens", batch)
    assert float(lnf) == 5.0
    lnf, _ = encoder_decoder.get_loss_normalizing_factor_and_weights(
        encoder_decoder.SpecialLossNormalizingFactor.NUM_TOTAL_TARGET_TOKENS, batch)
    assert float(lnf) == 8.0
    lnf, w = encoder_decoder.get_loss_normalizing_factor_and_weights("AVERAGE_PER_SEQUENCE", batch)
    np.testing.assert_allclose(np.asarray(w), [[1 / 3] * 3 + [0], [0.5, 0.5, 0, 0]], rtol=1e-6)
    assert float(lnf) == pytest.approx(2.0)
    packed = {
        "decoder_target_tokens": np.array([[5, 1, 6, 7, 1, 0]]),
        "decoder_segment_ids": np.array([[1, 1, 2, 2, 2, 0]]),
        "decoder_positions": np.array([[0, 1, 0, 1, 2, 0]]),
    }
    lnf, w = encoder_decoder.get_loss_normalizing_factor_and_weights("average_per_sequence", packed)
    np.testing.assert_allclose(np.asarray(w), [[0.5, 0.5, 1 / 3, 1 / 3, 1 / 3, 0]], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown loss_normalizing_factor"):
        encoder_decoder.get_loss_normalizing_factor_and_weights("per_token", batch)


def test_loss_fn_sums_token_losses_and_reports_additive_metrics():
    batch = random_batch(5)
    loss, metrics = jax.jit(MODEL.loss_fn)(PARAMS, batch, None)
    logits = np.asarray(_logits(PARAMS, batch), np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    lp = logits - log_z[..., None]
    w = batch["decoder_loss_weights"]
    nll = -np.take_along_axis(lp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), float(((nll + 1e-4 * log_z ** 2) * w).sum()), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["z_loss"]), float((1e-4 * log_z ** 2 * w).sum()), rtol=1e-4)
    assert float(metrics["num_tokens"]) == w.sum()
    assert float(metrics["num_examples"]) == 3
    correct = ((logits.argmax(-1) == batch["decoder_target_tokens"]) * w).sum()
    assert float(metrics["correct_tokens"]) == correct
    grads = jax.jit(jax.grad(lambda p: MODEL.loss_fn(p, batch, None)[0]))(PARAMS)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
