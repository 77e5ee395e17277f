"""Every gin file in gin/ parses (with the required macros supplied) and builds its model."""
import pathlib
import re

import gin
import jax
import pytest

from personalize_t5x.trainer import gin_utils, partitioning, trainer as trainer_lib
from personalize_t5x.trainer.train import train as train_fn

GIN_DIR = gin_utils.REPO_GIN_DIR
# gin/t5x/ holds upstream T5X's gins (they import t5x): tests/interop parses and runs them
# with t5x.train and t5x.infer in the peer virtualenv.
ALL_GIN_FILES = sorted(p.relative_to(GIN_DIR).as_posix() for p in GIN_DIR.rglob("*.gin")
                       if not p.relative_to(GIN_DIR).as_posix().startswith("t5x/"))
MODEL_GINS = [f for f in ALL_GIN_FILES if f.startswith("models/")]
# Experiment gins of `personalize-t5x run` bind run.experiment, not a model: they are
# tested in tests/experiment/test_experiment_gins.py.
TRAINER_GIN_FILES = [f for f in ALL_GIN_FILES if "run.experiment" not in (GIN_DIR / f).read_text()]
RUN_GINS = {"runs/finetune.gin": "MODEL_DIR", "runs/eval.gin": "EVAL_OUTPUT_DIR", "runs/infer.gin": "INFER_OUTPUT_DIR"}
REQUIRED_VALUES = {
    "MODEL_DIR": "'/tmp/unused'", "EVAL_OUTPUT_DIR": "'/tmp/unused'", "INFER_OUTPUT_DIR": "'/tmp/unused'",
    "MIXTURE_OR_TASK_NAME": "'unused'", "TASK_FEATURE_LENGTHS": "{'inputs': 8, 'targets': 8}",
    "TRAIN_STEPS": "1", "CHECKPOINT_PATH": "'/tmp/unused'", "INITIAL_CHECKPOINT_PATH": "None", "VOCAB_SIZE": "128",
    "DATASET": "'unused'",  # the auxiliary-model experiments (gin/experiments/aux_*.gin)
}


def _required_macros(relative: str) -> list[str]:
    """Macros a file (or what it includes) sets to %gin.REQUIRED."""
    text = (GIN_DIR / relative).read_text()
    names = re.findall(r"^(\w+)\s*=\s*%gin\.REQUIRED", text, flags=re.M)
    for included in re.findall(r"^include\s+'([^']+)'", text, flags=re.M):
        names += _required_macros(included)
    return names


def _parse(files: list[str]) -> None:
    bindings = []
    for name in files:
        bindings += [f"{macro} = {REQUIRED_VALUES[macro]}" for macro in _required_macros(name)]
    gin_utils.parse_gin_flags([str(GIN_DIR)], files, bindings)


def _macro(name: str):
    return gin.query_parameter(f"%{name}").scoped_configurable_fn()


def test_there_is_something_to_check():
    assert len(MODEL_GINS) >= 6 and set(RUN_GINS) <= set(ALL_GIN_FILES)
    assert any(f.startswith("experiments/") for f in ALL_GIN_FILES)


@pytest.mark.parametrize("relative", TRAINER_GIN_FILES)
def test_gin_file_parses_and_builds_its_model(relative):
    files = [relative] if relative.startswith(("models/", "experiments/")) else ["models/t5_1_1_tiny.gin", relative]
    _parse(files)
    config = _macro("MODEL_CONFIG")
    model = _macro("MODEL")
    assert model.module.config == config
    header = re.search(r"^# ([\d,]+) parameters", (GIN_DIR / files[0]).read_text(), flags=re.M)
    if header:  # model gins state their size; the config must agree
        assert config.num_params == int(header.group(1).replace(",", ""))
    if config.num_params < 1_000_000:  # small enough to initialize here
        shapes = {"encoder_input_tokens": (2, 8), "decoder_input_tokens": (2, 8), "decoder_target_tokens": (2, 8)}
        variables = jax.eval_shape(lambda r: model.get_initial_variables(r, shapes), jax.random.PRNGKey(0))
        assert trainer_lib.param_count(variables["params"]) == config.num_params
        assert partitioning.logical_axes_of(variables)["decoder"]["logits_dense"]["kernel"] == \
            jax.sharding.PartitionSpec("embed", "vocab")


@pytest.mark.parametrize("relative", sorted(RUN_GINS))
def test_run_gins_open_with_the_macros_they_require(relative):
    text = (GIN_DIR / relative).read_text()
    header = text.split("from __gin__")[0]
    assert text.startswith("#")
    for macro in _required_macros(relative):
        assert f"- {macro}" in header, f"{relative} requires {macro} without listing it first"


def test_finetune_gin_binds_the_train_function_completely():
    _parse(["models/t5_1_1_tiny.gin", "runs/finetune.gin"])
    bound = gin.get_bindings(train_fn)
    assert bound["model_dir"] == "/tmp/unused" and bound["total_steps"] == 1 and bound["random_seed"] == 0
    assert bound["train_dataset_cfg"].pack is True and bound["train_dataset_cfg"].split == "train"
    assert bound["infer_eval_dataset_cfg"].pack is False
    schedule = gin.get_bindings(trainer_lib.create_learning_rate_scheduler)
    assert schedule["warmup_steps"] == 1000 and schedule["base_learning_rate"] == 0.001
    assert gin.get_bindings(trainer_lib.adafactor)["decay_rate"] == 0.8
