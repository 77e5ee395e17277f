"""This project beside real upstream T5X (../shared/peers), each side through its own entry points.

- `python -m t5x.train` trains on this project's SeqIO mixture through gin/t5x/ (T5X's own
  model and run gins, `import tasks`, a local vocabulary);
- the project restores the checkpoint T5X just wrote, every parameter exactly;
- the project's `infer` on that checkpoint decodes T5X's `t5x.infer` predictions token for
  token;
- T5X restores a checkpoint the project wrote (same step, parameters, optimizer state)
  and continues training from it.

Both sides run as subprocesses on one CPU device: T5X in the peer virtualenv
(tests/interop/peer_env.py), the project in this interpreter's environment. Skipped with
the reason when ../shared/peers is absent.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys

import numpy as np
import pytest

import peer_env
from shared_paths import REPO_ROOT

pytestmark = pytest.mark.slow

GIN = REPO_ROOT / "gin"
T5X_MODEL_GIN = GIN / "t5x" / "t5_1_1_tiny.gin"
T5X_TASKS_GIN = GIN / "t5x" / "tasks.gin"
T5X_INFER_GIN = GIN / "t5x" / "infer_tokens.gin"
PEER_RESTORE = pathlib.Path(__file__).with_name("peer_restore.py")

DATASET = "interop"
TASK = f"personalize_{DATASET}_immed_ctx"
MIXTURE = f"personalize_{DATASET}_immed_ctx_author_mix"
LENGTHS = "{'inputs': 64, 'targets': 32}"
VOCAB_SIZE = 512  # gin/t5x/t5_1_1_tiny.gin's VOCAB_SIZE; the project's model gin takes the same
T5X_STEPS = 80
PROJECT_STEPS = 4


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> pathlib.Path:
    peer_env.peer_python()  # skips without ../shared/peers; builds the virtualenv once
    return tmp_path_factory.mktemp("interop")


@pytest.fixture(scope="module")
def data_dir(work) -> pathlib.Path:
    """A PERSONALIZE_T5X_DATA_DIR with one dataset: the task tests' features folder and vocabulary."""
    from tests.tasks.task_fixtures import write_fixture_dataset

    root = work / "data"
    write_fixture_dataset(root / DATASET)
    return root


@pytest.fixture(scope="module")
def env(data_dir) -> dict:
    return peer_env.peer_environment(PERSONALIZE_T5X_DATA_DIR=os.fspath(data_dir))


@pytest.fixture(scope="module")
def vocab_flag(data_dir) -> str:
    return f"--gin.VOCABULARY_FILE='{data_dir / DATASET / 'vocab' / 'spm.model'}'"


def t5x_train_flags(model_dir: pathlib.Path, steps: int) -> list[str]:
    return [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{MIXTURE}'",
            f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=8",
            "--gin.USE_CACHED_TASKS=False", "--gin.RANDOM_SEED=0", f"--gin.train.eval_period={steps // 2}",
            "--gin.train.eval_steps=1", f"--gin.utils.SaveCheckpointConfig.period={steps // 2}",
            # A constant, large rate: after 80 steps the decodes copy the input's title (they
            # depend on the input, so equal decodes on both sides say something).
            "--gin.utils.create_learning_rate_scheduler.factors='constant'",
            "--gin.utils.create_learning_rate_scheduler.base_learning_rate=0.05"]


def t5x_gins(run_gin: str) -> list:
    return [T5X_MODEL_GIN, run_gin, T5X_TASKS_GIN]


@pytest.fixture(scope="module")
def t5x_model_dir(work, env, vocab_flag) -> pathlib.Path:
    model_dir = work / "t5x_model"
    peer_env.t5x_module("train", t5x_gins("t5x/configs/runs/pretrain.gin"),
                        [vocab_flag, *t5x_train_flags(model_dir, T5X_STEPS)], cwd=work, env=env, log_name="t5x_train")
    return model_dir


def peer_restore(checkpoint: pathlib.Path, output: pathlib.Path, env: dict, vocab_flag: str) -> dict:
    """T5X's own restore of `checkpoint` (tests/interop/peer_restore.py), as {T5X name: array}."""
    peer_env.run_logged([peer_env.peer_python(), PEER_RESTORE, checkpoint, output, T5X_MODEL_GIN, T5X_TASKS_GIN,
                         vocab_flag], cwd=output.parent, env=env, log=output.with_suffix(".log"))
    with np.load(output) as restored:
        return {name: restored[name] for name in restored.files}


def project_module(name: str, flags: list[str], *, cwd: pathlib.Path, env: dict) -> None:
    """`python -m personalize_t5x.trainer.<name>` with the project's tiny model gin at VOCAB_SIZE."""
    peer_env.run_logged([sys.executable, "-m", f"personalize_t5x.trainer.{name}", "--gin_file=models/t5_1_1_tiny.gin",
                         f"--gin_file=runs/{'finetune' if name == 'train' else name}.gin",
                         f"--gin.VOCAB_SIZE={VOCAB_SIZE}", *flags],
                        cwd=cwd, env=env, log=cwd / f"project_{name}.log")


def project_model():
    """The project's side of gin/t5x/t5_1_1_tiny.gin: gin/models/t5_1_1_tiny.gin at VOCAB_SIZE."""
    from personalize_t5x.network import t5
    from personalize_t5x.trainer import models

    config = t5.T5Config(vocab_size=VOCAB_SIZE, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                         num_encoder_layers=2, num_decoder_layers=2, mlp_activations=("gelu", "linear"))
    return models.EncoderDecoderModel(t5.Transformer(config))


def project_abstract_params():
    import jax

    from personalize_t5x.trainer import partitioning

    model = project_model()
    shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8), "decoder_target_tokens": (1, 8)}
    variables = jax.eval_shape(lambda r: model.get_initial_variables(r, shapes), jax.random.PRNGKey(0))
    return partitioning.unbox(variables["params"])


def _summary_scalars(logdir: pathlib.Path, tag: str) -> dict[int, float]:
    import tensorflow as tf

    values = {}
    for path in logdir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(os.fspath(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
                        else value.simple_value
    return values


def test_t5x_train_runs_on_the_projects_mixture_through_gin_t5x(t5x_model_dir):
    assert (t5x_model_dir / f"checkpoint_{T5X_STEPS}" / "state").is_dir()
    config = (t5x_model_dir / "config.gin").read_text()
    assert "import tasks" in config and f"MIXTURE_OR_TASK_NAME = '{MIXTURE}'" in config
    assert "from t5x.examples.t5 import network" in config and "adafactor.Adafactor" in config  # T5X's own model
    losses = _summary_scalars(t5x_model_dir / "train", "loss")
    assert T5X_STEPS in losses and np.isfinite(losses[T5X_STEPS]), losses
    # Both tasks of the mixture were trained on and evaluated.
    evaluated = {p.name for p in (t5x_model_dir / "training_eval").iterdir()}
    assert {TASK, f"personalize_{DATASET}_author_distinction"} <= evaluated, evaluated


def test_project_restores_the_checkpoint_t5x_just_wrote(t5x_model_dir, env, vocab_flag, work):
    from flax import traverse_util

    from personalize_t5x.trainer import checkpoints

    checkpoint = t5x_model_dir / f"checkpoint_{T5X_STEPS}"
    t5x_state = peer_restore(checkpoint, work / "t5x_state.npz", env, vocab_flag)
    assert int(t5x_state["state/step"]) == T5X_STEPS
    initial = peer_restore(t5x_model_dir / "checkpoint_0", work / "t5x_state_0.npz", env, vocab_flag)
    params = traverse_util.flatten_dict(checkpoints.load_initial_params(os.fspath(checkpoint),
                                                                       project_abstract_params()), sep="/")
    t5x_params = {name[len("target/"):]: value for name, value in t5x_state.items() if name.startswith("target/")}
    assert sorted(params) == sorted(t5x_params)
    for name, value in params.items():
        np.testing.assert_array_equal(value, t5x_params[name], err_msg=name)
    # Trained: the restored parameters are the last step's, not the initial ones.
    assert any(not np.array_equal(t5x_params[n], initial[f"target/{n}"]) for n in t5x_params)


def _jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_project_infer_on_a_t5x_checkpoint_decodes_t5x_predictions_token_for_token(t5x_model_dir, env, vocab_flag,
                                                                                  work):
    checkpoint = t5x_model_dir / f"checkpoint_{T5X_STEPS}"
    t5x_out, own_out = work / "t5x_infer", work / "project_infer"
    common = [f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
              f"--gin.CHECKPOINT_PATH='{checkpoint}'"]
    peer_env.t5x_module("infer", [*t5x_gins("t5x/configs/runs/infer.gin"), T5X_INFER_GIN],
                        [vocab_flag, *common, f"--gin.INFER_OUTPUT_DIR='{t5x_out}'"], cwd=work, env=env,
                        log_name="t5x_infer")
    # gin/runs/infer.gin decodes as T5X's beam search with 4 beams and alpha 0.6 by default.
    project_module("infer", [*common, f"--gin.INFER_OUTPUT_DIR='{own_out}'"], cwd=work, env=env)
    theirs = _jsonl(t5x_out / f"{TASK}-predict.jsonl-00000-of-00001")
    ours = _jsonl(own_out / f"{TASK}-test.jsonl")
    assert len(ours) == len(theirs) == 3
    for mine, upstream in zip(ours, theirs):
        assert mine["inputs"] == upstream["inputs"]["inputs_pretokenized"]
        assert mine["prediction_tokens"] == upstream["prediction_tokens"]
        assert mine["prediction"] == upstream["prediction"]
    # The decodes depend on the input (a model that emits one fixed string would pass trivially).
    assert len({tuple(r["prediction_tokens"]) for r in theirs}) > 1, theirs


def _optax_second_moments(opt_state) -> dict[str, np.ndarray]:
    """{param path: Adafactor's unfactored second moment `v`} from the project's optax state."""
    import jax

    moments = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state):
        names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        if "v" in names:
            moments["/".join(str(n) for n in names[names.index("v") + 1:])] = np.asarray(leaf)
    return moments


def test_t5x_restores_a_project_checkpoint_and_continues_training(work, env, vocab_flag):
    import jax
    from flax import traverse_util

    from personalize_t5x.trainer import checkpoints, partitioning, trainer as trainer_lib

    model_dir = work / "project_model"
    project_module("train", [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{MIXTURE}'",
                             f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", f"--gin.TRAIN_STEPS={PROJECT_STEPS}",
                             "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=0", f"--gin.CHECKPOINT_PERIOD={PROJECT_STEPS}",
                             "--gin.DROPOUT_RATE=0.0"], cwd=work, env=env)
    # What the project wrote, read back by the project.
    trainer = trainer_lib.Trainer(model=project_model(),
                                  partitioner=partitioning.PjitPartitioner(devices=jax.devices()[:1]))
    shapes = {"encoder_input_tokens": (8, 64), "decoder_input_tokens": (8, 32), "decoder_target_tokens": (8, 32)}
    abstract, shardings, _ = trainer.abstract_state(shapes)
    own = trainer.state_from_dict(checkpoints.TrainStateCheckpointer(os.fspath(model_dir)).restore(
        abstract, shardings, PROJECT_STEPS))

    t5x_state = peer_restore(model_dir / f"checkpoint_{PROJECT_STEPS}", work / "project_state.npz", env, vocab_flag)
    assert int(t5x_state["state/step"]) == PROJECT_STEPS == int(own.step)
    for name, value in traverse_util.flatten_dict(jax.device_get(own.params), sep="/").items():
        np.testing.assert_array_equal(t5x_state[f"target/{name}"], value, err_msg=name)
    moments = _optax_second_moments(jax.device_get(own.opt_state))
    assert moments, "no Adafactor second moments in the project's optimizer state"
    for name, value in moments.items():
        np.testing.assert_array_equal(t5x_state[f"state/param_states/{name}/v"], value, err_msg=name)

    # T5X continues the project's run: it resumes at PROJECT_STEPS (no fresh checkpoint_0).
    resumed = work / "project_model_t5x"
    shutil.copytree(model_dir, resumed)
    peer_env.t5x_module("train", t5x_gins("t5x/configs/runs/pretrain.gin"),
                        [vocab_flag, *t5x_train_flags(resumed, PROJECT_STEPS + 2)],
                        cwd=work, env=env, log_name="t5x_resume")
    assert (resumed / f"checkpoint_{PROJECT_STEPS + 2}" / "state").is_dir()
    assert not (resumed / "checkpoint_0").exists()
    losses = _summary_scalars(resumed / "train", "loss")
    # T5X writes its first train summary at the step it resumed from (4 here), then every
    # period; a run restarted from scratch would log steps below PROJECT_STEPS.
    assert losses and min(losses) >= PROJECT_STEPS and max(losses) == PROJECT_STEPS + 2, losses
