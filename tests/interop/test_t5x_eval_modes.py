"""The project's eval picks the checkpoints upstream T5X's eval picks, in the same order.

A MODEL_DIR of the project's checkpoints at steps 3, 6, 9 and 10 (10 sorts before 3 as
text), beside an unfinished orbax save; upstream T5X's own checkpoint-path functions
(tests/interop/peer_checkpoint_paths.py, in the peer virtualenv) answer which checkpoints
mode 'latest' and 'all' restore, which ones 'all' still has to evaluate after the project's
eval wrote its eval.<mixture>.ckpt, and that a MODEL_DIR is no 'specific' checkpoint.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil

import jax
import pytest

import peer_env

pytestmark = pytest.mark.slow

PEER_PATHS = pathlib.Path(__file__).with_name("peer_checkpoint_paths.py")
TASK_MODULE = "tests.trainer.tiny_task"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> pathlib.Path:
    peer_env.peer_python()  # skips without ../shared/peers
    from personalize_t5x import cli

    model_dir = tmp_path_factory.mktemp("evalmodes_interop") / "trained"
    args = ["train", "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/finetune.gin",
            f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='trainer_test_reverse'",
            f"--gin.MIXTURE_OR_TASK_MODULE='{TASK_MODULE}'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 16}",
            "--gin.TRAIN_STEPS=10", "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=None", "--gin.CHECKPOINT_PERIOD=3",
            "--gin.LOG_PERIOD=5"]
    assert cli.main(args) == 0
    assert sorted(int(p.name.split("_")[1]) for p in model_dir.glob("checkpoint_*")) == [3, 6, 9, 10]
    return model_dir


def _t5x_paths(model_dir: pathlib.Path, evaluated_file: pathlib.Path, work: pathlib.Path) -> dict:
    output = work / "t5x_paths.json"
    peer_env.run_logged([peer_env.peer_python(), PEER_PATHS, model_dir, evaluated_file, output], cwd=work,
                        env=peer_env.peer_environment(), log=work / "t5x_paths.log", timeout=300)
    return json.loads(output.read_text())


def _evaluate(model_dir: pathlib.Path, out: pathlib.Path, mode: str) -> dict:
    from tests.trainer import tiny_task
    from tests.trainer.trainer_helpers import tiny_model

    from personalize_t5x.trainer import eval as eval_lib
    from personalize_t5x.trainer import partitioning, utils

    return eval_lib.evaluate(
        model=tiny_model(layers=2),
        dataset_cfg=utils.DatasetConfig(mixture_or_task_name=tiny_task.TASK_NAME,
                                        task_feature_lengths={"inputs": 16, "targets": 16}, split="test",
                                        batch_size=8, seed=42),
        restore_checkpoint_cfg=utils.RestoreCheckpointConfig(path=os.fspath(model_dir), mode=mode),
        partitioner=partitioning.PjitPartitioner(devices=jax.devices()[:1]), output_dir=os.fspath(out),
        predict_options={"method": "greedy"}, teacher_forced=False)


def test_eval_all_and_latest_pick_t5xs_steps_in_t5xs_order(trained, tmp_path):
    from personalize_t5x.trainer import checkpoints
    from personalize_t5x.trainer import eval as eval_lib
    from personalize_t5x.trainer import utils

    model_dir, out = tmp_path / "model", tmp_path / "eval"
    for step in (3, 6):
        shutil.copytree(trained / f"checkpoint_{step}", model_dir / f"checkpoint_{step}")
    # An orbax save in progress: T5X's glob pattern and the project's listing both pass it over.
    (model_dir / "checkpoint_12.orbax-checkpoint-tmp-1700000000").mkdir()
    first = _evaluate(model_dir, out, "all")
    for step in (9, 10):  # training went on after the first evaluation
        shutil.copytree(trained / f"checkpoint_{step}", model_dir / f"checkpoint_{step}")
    evaluated_file = eval_lib.evaluated_checkpoints_file(out, "trainer_test_reverse")
    after_first = evaluated_file.read_text().split("\n")
    t5x = _t5x_paths(model_dir, evaluated_file, tmp_path)
    second = _evaluate(model_dir, out, "all")

    def names(paths):
        return [os.fspath(p) for p in paths]

    assert t5x["all"] == [f"{model_dir}/checkpoint_{s}" for s in (3, 6, 9, 10)]
    assert names(r["checkpoint"] for r in first["results"] + second["results"]) == t5x["all"]
    per_step = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in per_step] == [3, 6, 9, 10]
    # T5X reads the project's eval.<mixture>.ckpt as the project wrote it (its order) and
    # would go on with the checkpoints the project's second run evaluated.
    assert after_first == t5x["evaluated_sorted"] == t5x["all"][:2]
    assert t5x["still_to_evaluate"] == names(r["checkpoint"] for r in second["results"]) == t5x["all"][2:]
    assert second["skipped"] == t5x["all"][:2]
    assert evaluated_file.read_text().split("\n") == t5x["all"]

    assert t5x["latest"] == [f"{model_dir}/checkpoint_10"]
    assert names(eval_lib.restore_paths(utils.RestoreCheckpointConfig(path=os.fspath(model_dir), mode="latest"))
                 ) == t5x["latest"]
    # T5X refuses a MODEL_DIR as a 'specific' checkpoint; so does the project (one line).
    assert "improperly formatted checkpoint directory" in t5x["specific_model_dir_error"]
    with pytest.raises(checkpoints.CheckpointError, match="is a MODEL_DIR"):
        eval_lib.restore_paths(utils.RestoreCheckpointConfig(path=os.fspath(model_dir), mode="specific"))
