"""Meshes, T5X's logical axis rules, and the same training on every mesh shape."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from personalize_t5x.trainer import partitioning, trainer as trainer_lib
from trainer_helpers import input_shapes, packed_batch, tiny_model


def test_standard_rules_are_t5x_rules():
    rules = dict(partitioning.standard_logical_axis_rules())
    assert rules["batch"] == "data"
    for axis in ("vocab", "mlp", "heads", "joined_kv"):
        assert rules[axis] == "model"
    for axis in ("embed", "kv", "relpos_buckets", "length", "layers", "stack", "mlp_activations"):
        assert rules[axis] is None
    two_d = partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2)
    assert ("embed", "data") in two_d
    with pytest.raises(ValueError, match="must be 1 or 2"):
        partitioning.standard_logical_axis_rules(activation_partitioning_dims=3)


def test_mesh_shapes_from_num_partitions_and_mesh_shape():
    assert partitioning.PjitPartitioner(num_partitions=2).mesh_shape == (4, 2)
    assert partitioning.PjitPartitioner(mesh_shape=(-1, 4)).mesh_shape == (2, 4)
    assert partitioning.PjitPartitioner().mesh.axis_names == ("data", "model")
    with pytest.raises(ValueError, match="does not divide"):
        partitioning.PjitPartitioner(num_partitions=3)
    with pytest.raises(ValueError, match="needs 4 devices"):
        partitioning.PjitPartitioner(mesh_shape=(2, 2))
    with pytest.raises(ValueError, match="not divisible by the data axis"):
        partitioning.PjitPartitioner(num_partitions=1).batch_sharding(6)


def test_multihost_flags_validate_before_initializing():
    partitioning.initialize_distributed()  # single process: nothing to do
    with pytest.raises(ValueError, match="--process_count and --process_index"):
        partitioning.initialize_distributed(coordinator_address="localhost:1234")
    with pytest.raises(ValueError, match="outside"):
        partitioning.initialize_distributed(coordinator_address="localhost:1234", process_count=2, process_index=2)


_INITIAL_PARAMS = {}


def _run(mesh_shape, steps=3, num_microbatches=None, dropout_rate=0.1, lnf="NUM_REAL_TARGET_TOKENS"):
    devices = jax.devices()[: mesh_shape[0] * mesh_shape[1]]
    partitioner = partitioning.PjitPartitioner(mesh_shape=mesh_shape, devices=devices)
    lr = trainer_lib.create_learning_rate_scheduler(base_learning_rate=0.01, warmup_steps=2)
    trainer = trainer_lib.Trainer(model=tiny_model(dropout_rate=dropout_rate, loss_normalizing_factor=lnf),
                                  partitioner=partitioner, learning_rate_fn=lr, num_microbatches=num_microbatches)
    batch = packed_batch()
    # The first run initializes; later ones start from the same parameters placed on
    # their own mesh (cheaper to compile than a second random init, same numbers).
    if "params" not in _INITIAL_PARAMS:
        state = trainer.init_state(jax.random.PRNGKey(0), input_shapes(batch))
        _INITIAL_PARAMS["params"] = jax.tree.map(np.asarray, jax.device_get(state.params))
    else:
        state = trainer.init_state(None, input_shapes(batch), params=_INITIAL_PARAMS["params"])
    losses = []
    for _ in range(steps):
        state, metrics = trainer.train_step(state, batch, jax.random.PRNGKey(7))
        losses.append(float(metrics["loss"]))
    return losses, state, trainer


def test_meshes_give_the_single_device_losses_and_shard_by_the_rules():
    reference, ref_state, _ = _run((1, 1))
    assert reference[2] < reference[0], reference  # it learns
    for shape in [(8, 1), (4, 2), (2, 4)]:
        losses, state, trainer = _run(shape)
        np.testing.assert_allclose(losses, reference, rtol=2e-4, err_msg=str(shape))
        kernel = state.params["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]  # [embed, mlp]
        assert kernel.sharding.spec == P(None, "model")
        assert kernel.sharding.mesh.shape == {"data": shape[0], "model": shape[1]}
        embedding = state.params["token_embedder"]["embedding"]  # [vocab, embed]
        assert embedding.sharding.spec == P("model", None)
        # Adafactor's unfactored second moment (dims < 128) has its parameter's sharding.
        v = state.opt_state[0].v["decoder"]["logits_dense"]["kernel"]  # [embed, vocab]
        assert v.sharding.spec == P(None, "model")
        np.testing.assert_allclose(np.asarray(kernel), np.asarray(ref_state.params["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]),
                                   atol=2e-5)


def test_microbatches_sum_to_the_whole_batch_gradient():
    whole, whole_state, _ = _run((2, 1), steps=2, dropout_rate=0.0)
    split, split_state, _ = _run((2, 1), steps=2, num_microbatches=4, dropout_rate=0.0)
    np.testing.assert_allclose(split, whole, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(whole_state.params), jax.tree.leaves(split_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    with pytest.raises(ValueError, match="positive integer"):
        trainer_lib.Trainer(model=tiny_model(), partitioner=partitioning.PjitPartitioner(), num_microbatches=0)


def test_factored_adafactor_state_takes_the_axis_names_of_the_dims_optax_kept():
    partitioner = partitioning.PjitPartitioner(mesh_shape=(2, 4), logical_axis_rules=partitioning.standard_logical_axis_rules(
        parameter_partitioning_dims=2))
    params = {"dense": {"kernel": np.zeros((256, 512), np.float32)},
              "square": {"kernel": np.zeros((256, 256), np.float32)},
              "scale": np.zeros((256,), np.float32)}
    logical = {"dense": {"kernel": P("embed", "mlp")}, "square": {"kernel": P("embed", "joined_kv")},
               "scale": P("embed")}
    opt_state = jax.eval_shape(trainer_lib.adafactor(1e-3).init, params)
    derived = partitioning.optimizer_state_shardings(partitioner, opt_state, params, logical)[0]
    # [256, 512]: v_row drops the larger (mlp) dimension, v_col the embed one.
    assert opt_state[0].v_row["dense"]["kernel"].shape == (256,)
    assert derived.v_row["dense"]["kernel"].spec == P("data")
    assert derived.v_col["dense"]["kernel"].spec == P("model")
    # Square: the shapes of v_row and v_col are equal, their dimensions are not. optax
    # reduces dimension 1 into v_row and dimension 0 into v_col.
    assert derived.v_row["square"]["kernel"].spec == P("data")
    assert derived.v_col["square"]["kernel"].spec == P("model")
    assert derived.v["square"]["kernel"].spec == P()  # the [1] placeholder of a factored moment
    assert derived.v["scale"].spec == P("data")  # unfactored: the parameter's own axes
    assert derived.count.spec == P()


def _square_model():
    """Attention kernels [embed, joined_kv] of 128 x 128: square, and factored by Adafactor."""
    from personalize_t5x.network import t5
    from personalize_t5x.trainer import models

    config = t5.T5Config(vocab_size=128, emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256,
                         num_encoder_layers=1, num_decoder_layers=1, mlp_activations=("gelu", "linear"))
    return models.EncoderDecoderModel(t5.Transformer(config), z_loss=1e-4)


def test_eight_devices_with_data_and_model_axes_train_as_one_device_with_factored_square_kernels():
    batch = packed_batch()
    lr = trainer_lib.create_learning_rate_scheduler(base_learning_rate=0.01, warmup_steps=2)
    results = {}
    initial = None
    for shape in [(1, 1), (2, 4)]:
        rules = partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2)
        partitioner = partitioning.PjitPartitioner(mesh_shape=shape, devices=jax.devices()[:shape[0] * shape[1]],
                                                   logical_axis_rules=rules)
        trainer = trainer_lib.Trainer(model=_square_model(), partitioner=partitioner, learning_rate_fn=lr)
        if initial is None:
            state = trainer.init_state(jax.random.PRNGKey(0), input_shapes(batch))
            initial = jax.tree.map(np.asarray, jax.device_get(state.params))
        else:
            state = trainer.init_state(None, input_shapes(batch), params=initial)
        losses = []
        for _ in range(3):
            state, metrics = trainer.train_step(state, batch, jax.random.PRNGKey(7))
            losses.append(float(metrics["loss"]))
        results[shape] = (losses, jax.device_get(state))
        if shape == (2, 4):
            factored = state.opt_state[0]
            query = ["encoder", "layers_0", "attention", "query", "kernel"]
            pick = lambda tree: tree[query[0]][query[1]][query[2]][query[3]][query[4]]  # noqa: E731
            assert pick(state.params).shape == (128, 128)
            assert pick(state.params).sharding.spec == P("data", "model")
            assert pick(factored.v_row).shape == pick(factored.v_col).shape == (128,)
            assert pick(factored.v_row).sharding.spec == P("data")  # embed kept
            assert pick(factored.v_col).sharding.spec == P("model")  # joined_kv kept
    (ref_losses, ref_state), (losses, state) = results[(1, 1)], results[(2, 4)]
    assert ref_losses[2] < ref_losses[0], ref_losses
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-4)
    for a, b in zip(jax.tree.leaves(ref_state.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
    for a, b in zip(jax.tree.leaves(ref_state.opt_state), jax.tree.leaves(state.opt_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-9)
