"""T5X's run semantics: restore mode and dtype, the step after an initial checkpoint, the
input position from the saved iterator state, --gin_search_paths, --initialization_timeout,
and the start-up checks (macro typos, vocabulary size, TASK_FEATURE_LENGTHS)."""
import argparse
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

import tiny_task
from test_trainer_entry_points import train_args
from trainer_helpers import input_shapes, packed_batch

from personalize_t5x import cli
from personalize_t5x.trainer import checkpoints
from personalize_t5x.trainer import gin_utils
from personalize_t5x.trainer import partitioning
from personalize_t5x.trainer import trainer as trainer_lib
from personalize_t5x.trainer import utils

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("semantics") / "model"
    assert cli.main(train_args(model_dir, extra=["--gin.EVAL_PERIOD=None"])) == 0
    return model_dir


def _error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


# -- RestoreCheckpointConfig.mode and .dtype ---------------------------------
def test_restore_modes_pick_the_folders_t5x_picks(run):
    assert checkpoints.checkpoint_paths(os.fspath(run), "latest") == [run / "checkpoint_4"]
    assert checkpoints.checkpoint_paths(os.fspath(run), "all") == [run / "checkpoint_2", run / "checkpoint_4"]
    assert checkpoints.checkpoint_paths(os.fspath(run / "checkpoint_2"), "specific") == [run / "checkpoint_2"]
    with pytest.raises(checkpoints.CheckpointError, match="no finished checkpoint"):
        checkpoints.checkpoint_paths(os.fspath(run / "checkpoint_2" / "state"), "latest")
    with pytest.raises(utils.ConfigError, match="'specific', 'latest' or 'all'"):
        utils.RestoreCheckpointConfig(path="x", mode="newest")


def test_restore_dtype_casts_the_parameters_only(run):
    from trainer_helpers import tiny_model

    trainer = trainer_lib.Trainer(model=tiny_model(layers=2), partitioner=partitioning.PjitPartitioner(num_partitions=1))
    abstract, shardings, _ = trainer.abstract_state(input_shapes(packed_batch()))
    full = checkpoints.restore_state_dict(run / "checkpoint_4", abstract, shardings)
    half = checkpoints.restore_state_dict(run / "checkpoint_4", abstract, shardings, dtype="bfloat16")
    for a, b in zip(jax.tree.leaves(full["params"]), jax.tree.leaves(half["params"])):
        assert b.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(np.asarray(a).astype(ml_dtypes.bfloat16), np.asarray(b))
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(half["opt_state"]) if x.ndim)
    params = checkpoints.load_initial_params(os.fspath(run), abstract.params, dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(ml_dtypes.bfloat16)}


def test_training_refuses_mode_all(run, tmp_path, capsys):
    args = train_args(tmp_path / "m", extra=[f"--gin.INITIAL_CHECKPOINT_PATH='{run}'",
                                             "--gin.utils.RestoreCheckpointConfig.mode='all'"])
    assert cli.main(args) == 2
    assert "'all' is for evaluation" in _error_line(capsys)


# -- the step after INITIAL_CHECKPOINT_PATH ------------------------------------
def test_initial_checkpoint_brings_its_step_and_optimizer_state_as_in_t5x(run, tmp_path, capsys):
    model_dir = tmp_path / "finetune"
    args = train_args(model_dir, steps=6, extra=[f"--gin.INITIAL_CHECKPOINT_PATH='{run}'",
                                                  "--gin.utils.RestoreCheckpointConfig.mode='latest'",
                                                  "--gin.EVAL_PERIOD=None"])
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert f"initial train state from {run}/checkpoint_4 at step 4" in err and "steps 4 -> 6" in err
    assert sorted(p.name for p in model_dir.glob("checkpoint_*")) == ["checkpoint_6"]
    # T5X counts TRAIN_STEPS from the checkpoint's step: fewer is an error.
    assert cli.main(train_args(tmp_path / "short", steps=3,
                               extra=[f"--gin.INITIAL_CHECKPOINT_PATH='{run}/checkpoint_4'"])) == 2
    assert "TRAIN_STEPS 3 is below the checkpoint's step 4" in _error_line(capsys)


# -- the input position ------------------------------------------------------
def _input(seed=0):
    ds = tf.data.Dataset.range(1000).shuffle(64, seed=seed).batch(4).map(lambda x: {"x": x}).prefetch(2)
    return utils.CheckpointableInput(ds)


def test_input_resumes_from_the_saved_iterator_state_not_by_skipping(tmp_path):
    straight = _input()
    expected = [next(straight)["x"] for _ in range(9)]
    first = _input()
    for _ in range(5):
        next(first)
    handler = checkpoints.DatasetIteratorHandler()
    handler.save(tmp_path, checkpoints.DatasetArgs(first))
    assert (tmp_path / "train_ds-000-of-001.index").exists()

    resumed = _input()
    resumed.skip_to = None  # a replay would call this; the iterator state must be enough
    item = handler.restore(tmp_path, checkpoints.DatasetArgs(resumed))
    assert item.restored_from == "iterator" and item.position == 5
    for want in expected[5:]:
        np.testing.assert_array_equal(next(resumed)["x"], want)


def test_a_generator_pipeline_is_positioned_by_its_saved_position(tmp_path):
    def generator():
        yield from range(100)

    def make():
        ds = tf.data.Dataset.from_generator(generator, output_signature=tf.TensorSpec([], tf.int64))
        return utils.CheckpointableInput(ds.batch(2).map(lambda x: {"x": x}))

    first = make()
    for _ in range(3):
        next(first)
    handler = checkpoints.DatasetIteratorHandler()
    handler.save(tmp_path, checkpoints.DatasetArgs(first))
    assert not first.checkpointable and not list(tmp_path.glob("train_ds-*"))
    resumed = handler.restore(tmp_path, checkpoints.DatasetArgs(make()))
    assert resumed.restored_from == "position"
    np.testing.assert_array_equal(next(resumed)["x"], [6, 7])


def test_resumed_training_reports_the_iterator_state(run, capsys):
    assert cli.main(train_args(run, steps=6, extra=["--gin.EVAL_PERIOD=None"])) == 0
    err = capsys.readouterr().err
    assert "input resumed at batch 4 (tf.data iterator state)" in err


# -- --gin_search_paths --------------------------------------------------------
def test_gin_search_paths_come_before_the_defaults_as_in_t5x(tmp_path):
    parser = argparse.ArgumentParser()
    gin_utils.add_entry_point_arguments(parser)
    assert gin_utils.search_paths_from_args(parser.parse_args([])) == [".", str(gin_utils.REPO_GIN_DIR)]
    args = parser.parse_args([f"--gin_search_paths={tmp_path},/elsewhere"])
    assert gin_utils.search_paths_from_args(args) == [str(tmp_path), "/elsewhere", str(gin_utils.REPO_GIN_DIR)]
    # A user's runs/finetune.gin wins over the repository's; models/ still comes from the repository.
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "finetune.gin").write_text(
        (gin_utils.REPO_GIN_DIR / "runs" / "finetune.gin").read_text().replace("LOG_PERIOD = 10", "LOG_PERIOD = 77"))
    gin_utils.parse_gin_flags(gin_utils.search_paths_from_args(args),
                              ["models/t5_1_1_tiny.gin", "runs/finetune.gin"], [], finalize_config=False)
    import gin

    assert gin.query_parameter("LOG_PERIOD/macro.value") == 77


# -- --initialization_timeout --------------------------------------------------
@pytest.mark.slow
def test_initialization_timeout_bounds_the_wait_for_other_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there: process 0 never comes

    def start(timeout):
        return subprocess.Popen(
            [sys.executable, "-m", "personalize_t5x.trainer.train", "--gin_file=runs/finetune.gin",
             "--multiprocess_gpu", f"--coordinator_address=127.0.0.1:{port}", "--process_count=2",
             "--process_index=1", f"--initialization_timeout={timeout}"],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    short, long = start(2), start(600)
    try:
        began = time.time()
        short.wait(timeout=120)
        took = time.time() - began
        assert short.returncode != 0
        assert "DEADLINE_EXCEEDED" in short.stderr.read().decode()
        assert long.poll() is None, "the 600 s timeout ended as early as the 2 s one"
        assert took < 100
    finally:
        for process in (short, long):
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stderr.close()


# -- start-up checks (issue 11 items 6 and 8) ------------------------------------
def test_a_misspelled_macro_is_refused(tmp_path, capsys):
    assert cli.main(train_args(tmp_path / "m", extra=["--gin.TRAIN_STPES=5"])) == 2
    line = _error_line(capsys)
    assert "macro TRAIN_STPES, which no loaded gin file uses; did you mean TRAIN_STEPS?" in line
    # A configurable's binding keeps gin's own check (an unknown parameter is still refused).
    assert cli.main(train_args(tmp_path / "n", extra=["--gin.trainer.Trainer.num_microbatchez=2"])) == 2
    assert "num_microbatchez" in _error_line(capsys)


def test_vocab_size_below_the_tasks_vocabulary_is_refused(tmp_path, capsys):
    assert cli.main(train_args(tmp_path / "m", extra=["--gin.VOCAB_SIZE=100"])) == 2
    line = _error_line(capsys)
    assert f"VOCAB_SIZE 100 is smaller than the {tiny_task.VOCAB_SIZE} ids" in line and "--gin.VOCAB_SIZE=128" in line
    assert not (tmp_path / "m").exists() or not list((tmp_path / "m").glob("checkpoint_*"))


@pytest.mark.parametrize("lengths", ["128", "'128'"])
def test_task_feature_lengths_not_a_dict_is_one_line(tmp_path, capsys, lengths):
    args = [a for a in train_args(tmp_path / "m") if not a.startswith("--gin.TASK_FEATURE_LENGTHS")]
    assert cli.main(args + [f"--gin.TASK_FEATURE_LENGTHS={lengths}"]) == 2
    assert "TASK_FEATURE_LENGTHS must be a dict" in _error_line(capsys)


def test_unknown_task_is_one_line_without_an_orbax_traceback(tmp_path):
    # demo_tiny_cpu.gin includes the model and run gins (gin probes its search paths for them).
    command = [sys.executable, "-m", "personalize_t5x.trainer.train", "--gin_file=experiments/demo_tiny_cpu.gin",
               f"--gin.MODEL_DIR='{tmp_path / 'm'}'",
               "--gin.MIXTURE_OR_TASK_NAME='no_such_task'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}",
               "--gin.TRAIN_STEPS=2", "--gin.VOCAB_SIZE=128"]
    result = subprocess.run(command, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "cannot schedule new futures" not in result.stderr
    assert "Path not found" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        line for line in result.stderr.splitlines() if "no_such_task" in line]
