"""The paper's learning-rate schedule, Adafactor's T5X settings, orbax save/keep/restore."""
import pathlib

import jax
import numpy as np
import optax
import pytest

from personalize_t5x.trainer import checkpoints, partitioning, trainer as trainer_lib
from trainer_helpers import input_shapes, packed_batch, tiny_model
from shared_paths import FIXTURES  # noqa: E402


def test_paper_schedule_warms_up_linearly_then_decays_as_inverse_sqrt():
    lr = trainer_lib.create_learning_rate_scheduler()  # 0.001, 1,000 warm-up steps
    values = {step: float(lr(step)) for step in (0, 250, 1000, 4000, 16000)}
    assert values[0] == pytest.approx(1e-8)  # floor (T5X's min_learning_rate)
    assert values[250] == pytest.approx(0.00025)
    assert values[1000] == pytest.approx(0.001)
    assert values[4000] == pytest.approx(0.0005)
    assert values[16000] == pytest.approx(0.00025)
    t5_style = trainer_lib.create_learning_rate_scheduler(factors="constant * rsqrt_decay", base_learning_rate=1.0,
                                                          warmup_steps=10000)
    assert float(t5_style(40000)) == pytest.approx(1 / 200)
    with pytest.raises(ValueError, match="unknown learning-rate factor 'cosine'"):
        trainer_lib.create_learning_rate_scheduler(factors="constant * cosine")


def test_adafactor_factors_large_dims_and_clips_updates():
    params = {"big": np.ones((256, 128), np.float32), "small": np.ones((64, 32), np.float32)}
    opt = trainer_lib.adafactor(1.0)
    state = opt.init(params)
    assert {state[0].v_row["big"].shape, state[0].v_col["big"].shape} == {(256,), (128,)}  # factored
    assert state[0].v["small"].shape == (64, 32)  # below 128: not factored
    grads = jax.tree.map(lambda p: 1e3 * np.ones_like(p), params)
    updates, _ = opt.update(grads, state, params)
    rms = float(np.sqrt(np.mean(np.square(updates["small"]))))
    # clipped to RMS 1, then scaled by the parameter RMS (1.0) and the learning rate 1.0
    assert rms == pytest.approx(1.0, rel=1e-3)


def test_checkpointer_keeps_the_last_k_and_restores_exactly(tmp_path):
    partitioner = partitioning.PjitPartitioner(num_partitions=2)
    trainer = trainer_lib.Trainer(model=tiny_model(), partitioner=partitioner)
    batch = packed_batch()
    state = trainer.init_state(jax.random.PRNGKey(0), input_shapes(batch))
    saver = checkpoints.TrainStateCheckpointer(str(tmp_path), period=1, keep=2)
    for _ in range(3):
        state, _ = trainer.train_step(state, batch, jax.random.PRNGKey(1))
        assert saver.save(state)
    saver.wait()
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*")) == ["checkpoint_2", "checkpoint_3"]
    abstract, shardings, _ = trainer.abstract_state(input_shapes(batch))
    restored = trainer.state_from_dict(saver.restore(abstract, shardings))
    saver.close()
    assert int(restored.step) == 3
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kernel = restored.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert kernel.sharding == state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].sharding
    # A checkpoint of another model is refused by name and shape before anything is read.
    other = trainer_lib.Trainer(model=tiny_model(layers=2), partitioner=partitioner)
    other_abstract, _, _ = other.abstract_state(input_shapes(batch))
    with pytest.raises(checkpoints.CheckpointError, match="missing"):
        checkpoints.load_initial_params(str(tmp_path), other_abstract.params)
    params = checkpoints.load_initial_params(str(tmp_path), abstract.params)
    np.testing.assert_array_equal(params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"], np.asarray(kernel))


def _tiny_fixture_abstract_params():
    trainer = trainer_lib.Trainer(model=tiny_model(layers=2), partitioner=partitioning.PjitPartitioner())
    batch = packed_batch()
    abstract, _, _ = trainer.abstract_state(input_shapes(batch))
    return abstract.params


@pytest.mark.parametrize("layout", ["checkpoint_legacy", "checkpoint_orbax"])
def test_initial_params_from_an_upstream_t5x_checkpoint(layout):
    from shared_paths import require_shared

    fixture = require_shared("fixtures/t5x_tiny")
    expected = np.load(fixture / "params.npz")
    params = checkpoints.load_initial_params(str(fixture / layout), _tiny_fixture_abstract_params())
    flat = checkpoints.flatten(params)
    assert set(flat) == set(expected.files)
    for name in expected.files:
        np.testing.assert_array_equal(flat[name], expected[name])


def test_initial_params_from_a_hugging_face_directory_and_a_bad_path(tmp_path):
    hf_dir = FIXTURES / "hf_t5_tiny" / "t5_1_1"
    from personalize_t5x.network import hf_checkpoints as checkpoints_hf
    from personalize_t5x.trainer import models as encoder_decoder
    from personalize_t5x.network import t5

    config_kwargs, _ = checkpoints_hf.import_hf_t5(hf_dir)  # the architecture the directory declares
    module_config = t5.T5Config(**config_kwargs)
    trainer = trainer_lib.Trainer(model=encoder_decoder.EncoderDecoderModel(t5.Transformer(module_config)),
                                  partitioner=partitioning.PjitPartitioner())
    abstract, _, _ = trainer.abstract_state(input_shapes(packed_batch()))
    params = checkpoints.load_initial_params(str(hf_dir), abstract.params)
    assert checkpoints.flatten(params).keys() == checkpoints.flatten(abstract.params).keys()
    with pytest.raises(checkpoints.CheckpointError, match="no such file"):
        checkpoints.load_initial_params(str(tmp_path / "absent"), abstract.params)
    (tmp_path / "junk").mkdir()
    with pytest.raises(checkpoints.CheckpointError, match="junk"):
        checkpoints.load_initial_params(str(tmp_path / "junk"), abstract.params)
