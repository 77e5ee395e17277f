"""kill -9 after a checkpoint; the same command resumes and ends where an uninterrupted run ends."""
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import tiny_task
from test_trainer_entry_points import MODEL_GIN, TASK_FLAGS

from personalize_t5x import cli

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 16


def _args(model_dir):
    return ["train", MODEL_GIN, "--gin_file=runs/finetune.gin", f"--gin.MODEL_DIR='{model_dir}'", *TASK_FLAGS,
            f"--gin.TRAIN_STEPS={STEPS}", "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=None",
            "--gin.CHECKPOINT_PERIOD=2", "--gin.LOG_PERIOD=1", "--gin.RANDOM_SEED=3"]


def _params(step_dir):
    # T5X's layout: params under `target`, step and Adafactor state under `state`.
    restored = ocp.PyTreeCheckpointer().restore(os.fspath(step_dir / "state"))
    return restored["target"], restored["state"]["param_states"], int(restored["state"]["step"])


def _flat(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.slow
def test_kill_9_after_a_checkpoint_then_resume_matches_an_uninterrupted_run(tmp_path):
    # One compilation cache for the three runs: they compile the very same programs.
    cache = tmp_path / "xla_cache"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pathlib.Path(tiny_task.__file__).parent), str(REPO)]),
               JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    # T5X's way of calling it: `python -m personalize_t5x.trainer.train <flags>`, with --gin_bindings.
    flags = [f"--gin_bindings={a[len('--gin.'):].replace('=', ' = ', 1)}" if a.startswith("--gin.") else a
             for a in _args(tmp_path / "interrupted")[1:]]
    command = [sys.executable, "-m", "personalize_t5x.trainer.train", *flags]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = tmp_path / "interrupted" / "checkpoint_2" / "commit_success.txt"
    deadline = time.time() + 300
    while not first.exists():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert not (tmp_path / "interrupted" / f"checkpoint_{STEPS}").exists(), "the run finished before the kill"

    # The same command again: it must resume (not restart) and finish.
    resumed = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "[train] resuming from" in resumed.stderr
    assert "step 1/" not in resumed.stderr  # it did not start over

    # The uninterrupted run, in this process, with the same flags and seed.
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(cache))
    try:
        assert cli.main(_args(tmp_path / "straight")) == 0
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
    params_a, opt_a, step_a = _params(tmp_path / "straight" / f"checkpoint_{STEPS}")
    params_b, opt_b, step_b = _params(tmp_path / "interrupted" / f"checkpoint_{STEPS}")
    assert step_a == step_b == STEPS
    for a, b in zip(_flat(params_a) + _flat(opt_a), _flat(params_b) + _flat(opt_b)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # And training did move the parameters (the comparison is not between two inits).
    first_params, _, _ = _params(tmp_path / "interrupted" / "checkpoint_2")
    assert any(not np.allclose(a, b) for a, b in zip(_flat(first_params), _flat(params_b)))
