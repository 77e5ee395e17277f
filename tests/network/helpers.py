"""Shared helpers for the model tests: the upstream-T5X fixture and tiny configs."""
import json

import numpy as np
from flax import traverse_util

from shared_paths import require_shared
from personalize_t5x.network import t5

FIXTURE = "fixtures/t5x_tiny"

# The T5X-style logical axis rules a trainer uses (t5x.partitioning.standard_logical_axis_rules).
STANDARD_RULES = (
    ("batch", "data"),
    ("vocab", "model"),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joined_kv", "model"),
    ("relpos_buckets", None),
    ("abspos_buckets", None),
    ("length", None),
    ("layers", None),
    ("stack", None),
    ("mlp_activations", None),
)


def fixture_dir():
    return require_shared(FIXTURE)


def fixture_config():
    d = fixture_dir()
    return t5.T5Config(**json.loads((d / "config.json").read_text())["T5Config"])


def fixture_params():
    flat = dict(np.load(fixture_dir() / "params.npz"))
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def fixture_inputs():
    return {k: np.asarray(v) for k, v in np.load(fixture_dir() / "inputs.npz").items()}


def fixture_array(name):
    return np.load(fixture_dir() / name)


def tiny_config(**overrides):
    """The fixture's architecture, available without ../shared."""
    kwargs = dict(
        vocab_size=128,
        dtype="float32",
        emb_dim=32,
        num_heads=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        head_dim=8,
        mlp_dim=64,
        mlp_activations=("gelu", "linear"),
        dropout_rate=0.0,
        logits_via_embedding=False,
    )
    kwargs.update(overrides)
    return t5.T5Config(**kwargs)


def random_batch(rng, batch=3, inputs_len=16, targets_len=12, vocab=128):
    """Unpacked EncDecFeatureConverter-style batch with EOS=1 and trailing padding."""
    rs = np.random.RandomState(rng)
    enc = np.zeros((batch, inputs_len), np.int32)
    tgt = np.zeros((batch, targets_len), np.int32)
    for i in range(batch):
        n = rs.randint(1, inputs_len)
        enc[i, :n] = rs.randint(3, vocab, n)
        enc[i, n] = 1
        m = rs.randint(1, targets_len)
        tgt[i, :m] = rs.randint(3, vocab, m)
        tgt[i, m] = 1
    dec_in = np.zeros_like(tgt)
    dec_in[:, 1:] = tgt[:, :-1]
    return {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": dec_in,
        "decoder_target_tokens": tgt,
        "decoder_loss_weights": (tgt > 0).astype(np.int32),
    }


def param_shapes(config):
    """``jax.eval_shape`` of init: params and params_axes without compiling anything."""
    import jax
    import jax.numpy as jnp

    tokens = jnp.ones((1, 4), jnp.int32)
    return jax.eval_shape(
        lambda: t5.Transformer(config).init(jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False)
    )


def random_params(config, seed=0, scale=0.5):
    """Random float32 params of the right tree, made with numpy (init compiles slowly on CPU)."""
    rs = np.random.RandomState(seed)
    shapes = param_shapes(config)["params"]
    flat = traverse_util.flatten_dict(shapes)
    out = {}
    for k, s in flat.items():
        if k[-1] == "scale":
            out[k] = (1.0 + 0.1 * rs.standard_normal(s.shape)).astype(np.float32)
        else:
            fan_in = s.shape[0] if len(s.shape) == 2 and k[-1] == "kernel" else 1
            out[k] = (scale * rs.standard_normal(s.shape) / np.sqrt(fan_in)).astype(np.float32)
    return traverse_util.unflatten_dict(out)
