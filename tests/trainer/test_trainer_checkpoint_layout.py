"""Checkpoints in T5X's on-disk layout and tree names; the old `default/` layout still loads."""
import json
import os

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import tiny_task  # noqa: F401  (registers the task)
from test_trainer_entry_points import train_args
from trainer_helpers import input_shapes, packed_batch

from personalize_t5x import cli
from personalize_t5x.network import t5
from personalize_t5x.trainer import checkpoints
from personalize_t5x.trainer import models
from personalize_t5x.trainer import partitioning
from personalize_t5x.trainer import trainer as trainer_lib
from shared_paths import require_shared


def _fixture_model():
    """t5_1_1_tiny.gin's model: the config of the upstream T5X fixture."""
    config = t5.T5Config(vocab_size=128, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64, num_encoder_layers=2,
                         num_decoder_layers=2, mlp_activations=("gelu", "linear"))
    return models.EncoderDecoderModel(t5.Transformer(config), z_loss=1e-4)


def _trainer():
    trainer = trainer_lib.Trainer(model=_fixture_model(), partitioner=partitioning.PjitPartitioner(num_partitions=1))
    abstract, shardings, _ = trainer.abstract_state(input_shapes(packed_batch()))
    return trainer, abstract, shardings


def _tree_keys(state_dir):
    metadata = json.loads((state_dir / "_METADATA").read_text())
    return {tuple(k["key"] for k in v["key_metadata"]) for v in metadata["tree_metadata"].values()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("layout") / "model"
    assert cli.main(train_args(model_dir, extra=["--gin.EVAL_PERIOD=None"])) == 0
    return model_dir


def test_step_folder_is_t5xs_state_and_dataset_items(run):
    step_dir = run / "checkpoint_4"
    assert sorted(p.name for p in step_dir.iterdir() if p.is_dir()) == ["dataset", "state"]
    handlers = json.loads((step_dir / "_CHECKPOINT_METADATA").read_text())["item_handlers"]
    assert handlers["state"].endswith("PyTreeCheckpointHandler")
    assert (step_dir / "state" / "manifest.ocdbt").exists()  # OCDBT, as T5X writes it
    assert sorted(p.name for p in (step_dir / "dataset").iterdir() if p.name.startswith("train_ds")) == [
        "train_ds-000-of-001.data-00000-of-00001", "train_ds-000-of-001.index"]


def test_tree_names_are_exactly_those_t5x_wrote_for_the_same_model(run):
    fixture = require_shared("fixtures/t5x_tiny/checkpoint_orbax/checkpoint_300/state")
    ours, theirs = _tree_keys(run / "checkpoint_4" / "state"), _tree_keys(fixture)
    assert ours == theirs, (sorted(ours - theirs)[:5], sorted(theirs - ours)[:5])
    assert ("state", "step") in ours and any(k[:2] == ("state", "param_states") and k[-1] == "v_row" for k in ours)
    # And the shapes agree too (the shape-[1] placeholders included).
    def shapes(state_dir):
        tree = ocp.PyTreeCheckpointer().metadata(os.fspath(state_dir))
        tree = getattr(getattr(tree, "item_metadata", tree), "tree", tree)
        return {k: tuple(v.shape) for k, v in checkpoints.flatten(tree).items()}
    assert shapes(run / "checkpoint_4" / "state") == shapes(fixture)


def test_restores_the_t5x_fixture_as_a_whole_train_state():
    fixture = require_shared("fixtures/t5x_tiny/checkpoint_orbax/checkpoint_300")
    want = np.load(require_shared("fixtures/t5x_tiny/params.npz"))
    trainer, abstract, shardings = _trainer()
    state = trainer.state_from_dict(checkpoints.restore_state_dict(fixture, abstract, shardings))
    assert int(state.step) == 300
    got = checkpoints.flatten(jax.device_get(state.params))
    assert set(got) == set(want.files)
    for name in want.files:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    raw = checkpoints.flatten(ocp.PyTreeCheckpointer().restore(os.fspath(fixture / "state")))
    factored = state.opt_state[0]
    v = checkpoints.flatten(jax.device_get(factored.v))
    for name in want.files:
        np.testing.assert_array_equal(v[name], np.asarray(raw[f"state/param_states/{name}/v"]), err_msg=name)
    assert int(factored.count) == 300


def test_save_then_restore_round_trips_step_params_and_optimizer_state(tmp_path):
    trainer, abstract, shardings = _trainer()
    state = trainer.init_state(jax.random.PRNGKey(0), input_shapes(packed_batch()))
    state, _ = trainer.train_step(state, packed_batch(), jax.random.PRNGKey(1))
    saver = checkpoints.TrainStateCheckpointer(os.fspath(tmp_path), period=1, asynchronous=False)
    assert saver.save(state, step=1)
    saver.close()
    restored = trainer.state_from_dict(checkpoints.restore_state_dict(tmp_path / "checkpoint_1", abstract, shardings))
    a, b = jax.tree_util.tree_leaves_with_path(jax.device_get(state)), jax.tree.leaves(jax.device_get(restored))
    assert len(a) == len(b)
    for (path, x), y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
    assert jax.tree.structure(restored) == jax.tree.structure(state)


def test_the_older_default_layout_still_loads(tmp_path):
    trainer, abstract, shardings = _trainer()
    state = trainer.init_state(jax.random.PRNGKey(3), input_shapes(packed_batch()))
    # What this project wrote before T5X's layout: one `default` item of {'step', 'params', 'opt_state'}.
    manager = ocp.CheckpointManager(os.fspath(tmp_path), options=ocp.CheckpointManagerOptions(
        step_prefix="checkpoint", enable_async_checkpointing=False))
    manager.save(7, args=ocp.args.StandardSave(state.state_dict()))
    manager.close()
    assert (tmp_path / "checkpoint_7" / "default").is_dir()
    assert checkpoints.latest_step_dir(tmp_path) == tmp_path / "checkpoint_7"
    restored = trainer.state_from_dict(checkpoints.restore_state_dict(tmp_path / "checkpoint_7", abstract, shardings))
    for x, y in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(restored))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    params = checkpoints.load_initial_params(os.fspath(tmp_path), abstract.params)
    np.testing.assert_array_equal(params["token_embedder"]["embedding"],
                                  np.asarray(state.params["token_embedder"]["embedding"]))


def test_factored_moments_get_t5xs_v_row_and_v_col_shapes():
    """T5X's rule: d0 = largest dim, d1 = second largest; v_row drops d0, v_col drops d1."""
    params = {"wide": {"kernel": np.zeros((128, 384), np.float32)}, "tall": {"kernel": np.zeros((512, 256), np.float32)},
              "small": {"scale": np.zeros((64,), np.float32)}}
    opt_state = trainer_lib.adafactor(1e-3).init(params)
    tree = checkpoints.t5x_state_dict(np.int32(0), params, opt_state, placeholder=lambda p: np.zeros((1,), np.float32))
    states = tree["state"]["param_states"]
    assert states["wide"]["kernel"]["v_row"].shape == (128,) and states["wide"]["kernel"]["v_col"].shape == (384,)
    assert states["tall"]["kernel"]["v_row"].shape == (256,) and states["tall"]["kernel"]["v_col"].shape == (512,)
    assert states["wide"]["kernel"]["v"].shape == (1,) and states["small"]["scale"]["v"].shape == (64,)
    assert all(states[k][n]["m"].shape == (1,) for k, n in (("wide", "kernel"), ("small", "scale")))
    # And back: the optax state is rebuilt leaf for leaf.
    step, back_params, back = checkpoints.optax_state_from_t5x(tree, opt_state)
    for x, y in zip(jax.tree.leaves(opt_state), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_momentum_is_t5xs_m_and_other_optimizers_are_refused():
    params = {"a": {"kernel": np.ones((4, 4), np.float32)}}
    with_momentum = trainer_lib.adafactor(1e-3, beta1=0.9).init(params)
    tree = checkpoints.t5x_state_dict(np.int32(0), params, with_momentum, placeholder=lambda p: np.zeros((1,)))
    assert tree["state"]["param_states"]["a"]["kernel"]["m"].shape == (4, 4)
    with pytest.raises(checkpoints.CheckpointError, match="Adafactor"):
        checkpoints.t5x_state_dict(np.int32(0), params, optax.adam(1e-3).init(params), placeholder=lambda p: p)


def test_a_step_folder_missing_its_tree_is_reported_not_passed_over(tmp_path):
    damaged = tmp_path / "checkpoint_5"
    (damaged / "state").mkdir(parents=True)
    (damaged / "_CHECKPOINT_METADATA").write_text("{}")
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"checkpoint_5: _METADATA is missing.*no older checkpoint: move checkpoint_5 away"):
        checkpoints.resume(tmp_path, None, None, fallback=True, fallback_option="--gin.RESUME_FALLBACK=True")
    assert damaged.exists()  # nothing to fall back to: left where it is
