"""RestoreCheckpointConfig.mode and .dtype in eval and infer, read as T5X's eval.py and infer.py
read them: 'specific' one checkpoint (a MODEL_DIR refused), 'latest' the newest step, 'all'
every step oldest first with per-step results and T5X's skip of evaluated checkpoints."""
import json
import os
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest

import tiny_task
from test_trainer_entry_points import MODEL_GIN, TASK_FLAGS, train_args
from trainer_helpers import tiny_model

from personalize_t5x import cli
from personalize_t5x.trainer import checkpoints
from personalize_t5x.trainer import eval as eval_lib
from personalize_t5x.trainer import infer as infer_lib
from personalize_t5x.trainer import partitioning
from personalize_t5x.trainer import trainer as trainer_lib
from personalize_t5x.trainer import utils

LENGTHS = {"inputs": 16, "targets": 16}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A MODEL_DIR with two checkpoints, checkpoint_2 and checkpoint_4."""
    model_dir = tmp_path_factory.mktemp("evalmodes") / "model"
    assert cli.main(train_args(model_dir, extra=["--gin.EVAL_PERIOD=None"])) == 0
    assert sorted(p.name for p in model_dir.glob("checkpoint_*")) == ["checkpoint_2", "checkpoint_4"]
    return model_dir


def _partitioner():
    # One device: these tests are about which checkpoints are read, not about sharding.
    return partitioning.PjitPartitioner(devices=jax.devices()[:1])


def _dataset_cfg():
    return utils.DatasetConfig(mixture_or_task_name=tiny_task.TASK_NAME, task_feature_lengths=LENGTHS,
                               split="test", batch_size=8, seed=42)


def _evaluate(path, out, mode="specific", dtype="float32"):
    return eval_lib.evaluate(
        model=tiny_model(layers=2), dataset_cfg=_dataset_cfg(),
        restore_checkpoint_cfg=utils.RestoreCheckpointConfig(path=os.fspath(path), mode=mode, dtype=dtype),
        partitioner=_partitioner(), output_dir=os.fspath(out), predict_options={"method": "greedy"})


def _infer(path, out, mode="specific", dtype="float32"):
    written = infer_lib.infer(
        model=tiny_model(layers=2), dataset_cfg=_dataset_cfg(),
        restore_checkpoint_cfg=utils.RestoreCheckpointConfig(path=os.fspath(path), mode=mode, dtype=dtype),
        partitioner=_partitioner(), output_dir=os.fspath(out), predict_options={"method": "greedy"})
    return [json.loads(line) for line in open(written[tiny_task.TASK_NAME])]


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def evaluated_all(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_all")
    return out, _evaluate(run, out, mode="all")


def test_all_evaluates_every_checkpoint_oldest_first_with_a_result_per_step(run, evaluated_all, tmp_path):
    out, every = evaluated_all
    assert every["mode"] == "all" and every["skipped"] == []
    assert [(r["step"], r["checkpoint"]) for r in every["results"]] == [
        (2, os.fspath(run / "checkpoint_2")), (4, os.fspath(run / "checkpoint_4"))]
    assert [(r["step"], r["metrics"]) for r in _jsonl(out / "metrics.jsonl")] == [
        (r["step"], r["metrics"]) for r in every["results"]]
    assert not (out / "metrics.json").exists()  # one checkpoint's file; 'all' writes metrics.jsonl
    # seqio's own per-step log and T5X's list of evaluated checkpoints, in step order.
    seqio_log = _jsonl(out / "inference_eval" / f"{tiny_task.TASK_NAME}-metrics.jsonl")
    assert [line["step"] for line in seqio_log] == [2, 4]
    assert (out / f"eval.{tiny_task.TASK_NAME}.ckpt").read_text().split("\n") == [
        f"{run}/checkpoint_2", f"{run}/checkpoint_4"]
    step2, step4 = (r["metrics"][tiny_task.TASK_NAME] for r in every["results"])
    assert step2["teacher_forced/loss"] != step4["teacher_forced/loss"]  # two different checkpoints read

    # 'specific' and 'latest' evaluate one checkpoint each, with the metrics 'all' gave its step.
    specific = _evaluate(run / "checkpoint_2", tmp_path / "specific")
    latest = _evaluate(run, tmp_path / "latest", mode="latest")
    assert (specific["step"], specific["checkpoint"]) == (2, os.fspath(run / "checkpoint_2"))
    assert (latest["step"], latest["checkpoint"]) == (4, os.fspath(run / "checkpoint_4"))
    assert json.loads((tmp_path / "latest" / "metrics.json").read_text()) == latest
    for one, same in ((specific, step2), (latest, step4)):
        assert one["metrics"][tiny_task.TASK_NAME] == pytest.approx(same, rel=1e-6)
    assert not (tmp_path / "latest" / "metrics.jsonl").exists()


def test_all_skips_the_checkpoints_an_earlier_run_evaluated(run, tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "eval"
    shutil.copytree(run / "checkpoint_2", model_dir / "checkpoint_2")
    first = _evaluate(model_dir, out, mode="all")
    assert [r["step"] for r in first["results"]] == [2]
    shutil.copytree(run / "checkpoint_4", model_dir / "checkpoint_4")  # training went on
    second = _evaluate(model_dir, out, mode="all")
    assert [r["step"] for r in second["results"]] == [4]
    assert second["skipped"] == [f"{model_dir}/checkpoint_2"]
    assert [r["step"] for r in _jsonl(out / "metrics.jsonl")] == [2, 4]
    assert (out / f"eval.{tiny_task.TASK_NAME}.ckpt").read_text().split() == [
        f"{model_dir}/checkpoint_2", f"{model_dir}/checkpoint_4"]
    again = _evaluate(model_dir, out, mode="all")
    assert again["results"] == [] and len(again["skipped"]) == 2
    assert [r["step"] for r in _jsonl(out / "metrics.jsonl")] == [2, 4]


def test_bfloat16_restores_and_evaluates_bfloat16_parameters(run, evaluated_all, tmp_path):
    trainer = trainer_lib.Trainer(model=tiny_model(layers=2), partitioner=_partitioner())
    shapes = eval_lib.model_input_shapes(_dataset_cfg(), 1)
    full, step = eval_lib.restore_params(trainer, run / "checkpoint_4", shapes)
    half, _ = eval_lib.restore_params(trainer, run / "checkpoint_4", shapes, dtype="bfloat16")
    assert step == 4
    assert {x.dtype for x in jax.tree.leaves(full)} == {np.dtype(np.float32)}
    assert {x.dtype for x in jax.tree.leaves(half)} == {np.dtype(ml_dtypes.bfloat16)}
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(half)):
        np.testing.assert_array_equal(np.asarray(a).astype(ml_dtypes.bfloat16), np.asarray(b))

    result = _evaluate(run / "checkpoint_4", tmp_path / "bf16", dtype="bfloat16")
    assert result["dtype"] == "bfloat16"
    loss = result["metrics"][tiny_task.TASK_NAME]["teacher_forced/loss"]
    float_loss = evaluated_all[1]["results"][1]["metrics"][tiny_task.TASK_NAME]["teacher_forced/loss"]
    # Rounded parameters: close to the float32 loss, and not equal to it (they were used).
    assert loss == pytest.approx(float_loss, rel=0.05) and loss != float_loss


def test_infer_latest_reads_the_newest_step_and_dtype_the_parameters(run, tmp_path, capsys):
    latest = _infer(run, tmp_path / "latest", mode="latest")
    assert f"[infer] {run / 'checkpoint_4'} (step 4, parameters in float32)" in capsys.readouterr().err
    assert latest == _infer(run / "checkpoint_4", tmp_path / "specific")
    half = _infer(run / "checkpoint_4", tmp_path / "bf16", dtype="bfloat16")
    assert [r["example_id"] for r in half] == [r["example_id"] for r in latest]
    scores = np.array([r["target_score"] for r in latest])
    half_scores = np.array([r["target_score"] for r in half])
    np.testing.assert_allclose(half_scores, scores, rtol=0.05)
    assert not np.array_equal(half_scores, scores)


def _one_line_error(capsys, args):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_one_line_errors_for_a_model_dir_as_specific_an_empty_dir_and_infer_all(run, tmp_path, capsys):
    eval_args = ["eval", MODEL_GIN, "--gin_file=runs/eval.gin", f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'e'}'",
                 *TASK_FLAGS]
    infer_args = ["infer", MODEL_GIN, "--gin_file=runs/infer.gin", f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'i'}'",
                  *TASK_FLAGS]
    for args in (eval_args, infer_args):
        line = _one_line_error(capsys, [*args, f"--gin.CHECKPOINT_PATH='{run}'"])
        assert "is a MODEL_DIR" in line and f"{run / 'checkpoint_4'}" in line and "'latest'" in line, line
    (tmp_path / "empty").mkdir()
    line = _one_line_error(capsys, [*eval_args, f"--gin.CHECKPOINT_PATH='{tmp_path / 'empty'}'",
                                    "--gin.utils.RestoreCheckpointConfig.mode='latest'"])
    assert "holds no finished checkpoint_<step> folder" in line
    line = _one_line_error(capsys, [*eval_args, f"--gin.CHECKPOINT_PATH='{run / 'checkpoint_4'}'",
                                    "--gin.utils.RestoreCheckpointConfig.mode='all'"])
    assert "is one checkpoint, not a MODEL_DIR" in line and "mode 'specific'" in line
    line = _one_line_error(capsys, [*infer_args, f"--gin.CHECKPOINT_PATH='{run}'",
                                    "--gin.utils.RestoreCheckpointConfig.mode='all'"])
    assert "'all' is for evaluation" in line
    line = _one_line_error(capsys, [*eval_args, f"--gin.CHECKPOINT_PATH='{run}'",
                                    "--gin.utils.RestoreCheckpointConfig.dtype='float16'"])
    assert "'float32' or 'bfloat16'" in line


def test_t5x_legacy_step_folders_are_listed_as_t5x_lists_them():
    from shared_paths import require_shared

    legacy = require_shared("fixtures/t5x_tiny") / "checkpoint_legacy"
    assert checkpoints.is_model_dir(legacy) and not checkpoints.is_model_dir(legacy / "checkpoint_300")
    assert checkpoints.checkpoint_paths(os.fspath(legacy), "latest") == [legacy / "checkpoint_300"]
    assert checkpoints.checkpoint_paths(os.fspath(legacy), "all") == [legacy / "checkpoint_300"]
