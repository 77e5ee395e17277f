"""Multi-host on one machine: two processes joined by jax.distributed (CPU collectives, gloo)
with 4 devices each against one process with 8 devices, through the real entry points.

- training, started by launch/gpu/slurm_train.sh as SLURM would start it on two nodes,
  reaches the same parameters and the same decoded evaluation metrics;
- inference splits the decoding between the hosts and writes one prediction file, the
  one the single process writes.
"""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

import tiny_task

pytestmark = pytest.mark.slow

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
TASK_FLAGS = [f"--gin.MIXTURE_OR_TASK_NAME='{tiny_task.TASK_NAME}'", "--gin.MIXTURE_OR_TASK_MODULE='tiny_task'",
              "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 16}", "--gin.PREDICT_OPTIONS={'method': 'greedy'}"]
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _environment(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS" and not k.startswith("SLURM_")}
    env.update(PYTHONPATH=f"{REPO}{os.pathsep}{HERE}", JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return env


def _launch(module: str, flags: list[str], *, devices: int, log: pathlib.Path, host: tuple[int, int, int] = None):
    """Starts `python -m personalize_t5x.trainer.<module>`; host = (index, count, port) joins a job."""
    args = [sys.executable, "-m", f"personalize_t5x.trainer.{module}", *flags]
    if host is not None:
        index, count, port = host
        args += [f"--coordinator_address=localhost:{port}", f"--process_count={count}", f"--process_index={index}"]
    return subprocess.Popen(args, cwd=REPO, env=_environment(devices), stdout=open(log, "w"),
                            stderr=subprocess.STDOUT), log


def _slurm_task(flags: list[str], *, gin_files: dict, devices: int, log: pathlib.Path, index: int, count: int,
                port: int, fake_bin: pathlib.Path):
    """launch/gpu/slurm_train.sh as `srun` starts it on node `index` of a `count`-node job
    (SLURM's variables; scontrol names this machine as the first node)."""
    env = _environment(devices)
    env.update(SLURM_NTASKS=str(count), SLURM_PROCID=str(index), SLURM_JOB_NODELIST="localhost",
               COORDINATOR_PORT=str(port), PYTHON=sys.executable, PATH=f"{fake_bin}{os.pathsep}{env['PATH']}",
               **gin_files)
    return subprocess.Popen(["bash", str(REPO / "launch" / "gpu" / "slurm_train.sh"), *flags], cwd=REPO, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT), log


def _run_together(jobs) -> None:
    """Waits for every started process; a failure shows its log's tail."""
    for process, log in jobs:
        try:
            code = process.wait(timeout=900)
        except subprocess.TimeoutExpired:
            process.kill()
            code = "timeout"
        if code != 0:
            for other, _ in jobs:
                other.kill()
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            raise AssertionError(f"{log.name}: exit {code}\n{tail}")


def _one_and_two_hosts(module: str, flags_for, tmp_path: pathlib.Path, *, slurm_env: dict = None) -> None:
    """The single 8-device process and the two 4-device hosts, all started at once; with
    `slurm_env` (MODEL_DIR, TASK, gin files for launch/common.sh) the hosts are started
    by launch/gpu/slurm_train.sh."""
    port = _free_port()
    jobs = [_launch(module, flags_for("one"), devices=8, log=tmp_path / f"{module}_one.log")]
    if slurm_env is None:
        jobs += [_launch(module, flags_for("two"), devices=4, log=tmp_path / f"{module}_two_{i}.log",
                         host=(i, 2, port)) for i in range(2)]
    else:
        fake_bin = tmp_path / "bin"
        fake_bin.mkdir()
        (fake_bin / "scontrol").write_text('#!/usr/bin/env bash\necho localhost\n')
        (fake_bin / "scontrol").chmod(0o755)
        flags = [f for f in flags_for("two") if not f.startswith("--gin_file=")]
        jobs += [_slurm_task(flags, gin_files=slurm_env, devices=4, log=tmp_path / f"{module}_two_{i}.log",
                             index=i, count=2, port=port, fake_bin=fake_bin) for i in range(2)]
    _run_together(jobs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")

    def flags(name):
        return ["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/finetune.gin", f"--gin.MODEL_DIR='{root / name}'",
                *TASK_FLAGS, f"--gin.TRAIN_STEPS={STEPS}", "--gin.BATCH_SIZE=8", f"--gin.EVAL_PERIOD={STEPS}",
                "--gin.EVAL_STEPS=1", f"--gin.CHECKPOINT_PERIOD={STEPS}", "--gin.LOG_PERIOD=1",
                "--gin.DROPOUT_RATE=0.0",
                # The hosts read disjoint shards of the split; unshuffled and unpacked, the
                # shards' rows of a step are exactly the single process's batch.
                "--gin.train/utils.DatasetConfig.pack=False", "--gin.train/utils.DatasetConfig.shuffle=False",
                "--gin.train_eval/utils.DatasetConfig.pack=False",
                "--gin.trainer.create_learning_rate_scheduler.factors='constant'",
                "--gin.trainer.create_learning_rate_scheduler.base_learning_rate=0.05"]

    slurm_env = {"MODEL_GIN": "models/t5_1_1_tiny.gin", "RUN_GIN": "runs/finetune.gin", "MODEL_DIR": str(root / "two"),
                 "TASK": tiny_task.TASK_NAME, "LENGTHS": "{'inputs': 16, 'targets': 16}", "TRAIN_STEPS": str(STEPS)}
    _one_and_two_hosts("train", flags, root, slurm_env=slurm_env)
    return root


def _params(model_dir: pathlib.Path):
    import jax
    from flax import traverse_util

    from personalize_t5x.network import t5
    from personalize_t5x.trainer import checkpoints, models, partitioning

    config = t5.T5Config(vocab_size=128, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64, num_encoder_layers=2,
                         num_decoder_layers=2, mlp_activations=("gelu", "linear"))
    model = models.EncoderDecoderModel(t5.Transformer(config))
    shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8), "decoder_target_tokens": (1, 8)}
    abstract = partitioning.unbox(jax.eval_shape(lambda r: model.get_initial_variables(r, shapes),
                                                 jax.random.PRNGKey(0))["params"])
    params = checkpoints.restore_params_only(model_dir / f"checkpoint_{STEPS}", abstract)
    return traverse_util.flatten_dict(params, sep="/")


def test_two_hosts_of_four_devices_train_to_the_parameters_of_one_host_of_eight(trained):
    one, two = _params(trained / "one"), _params(trained / "two")
    assert sorted(one) == sorted(two)
    for name, value in one.items():
        np.testing.assert_allclose(two[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    # Both hosts logged the same losses as the single process (one console line per step).
    losses = {}
    for name in ("train_one.log", "train_two_0.log"):
        lines = [line for line in (trained / name).read_text().splitlines() if line.startswith("[train] step ")]
        losses[name] = [float(line.split(" loss ")[1].split()[0]) for line in lines]
    assert len(losses["train_one.log"]) == STEPS
    np.testing.assert_allclose(losses["train_two_0.log"], losses["train_one.log"], rtol=1e-4)
    assert "[train] step" not in (trained / "train_two_1.log").read_text()  # host 1 stays quiet


def test_decoded_evaluation_is_split_across_hosts_with_the_single_host_metrics(trained):
    def metrics(name):
        path = trained / name / "inference_eval" / f"{tiny_task.TASK_NAME}-metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    one, two = metrics("one"), metrics("two")
    assert [m["step"] for m in one] == [m["step"] for m in two] == [STEPS]
    assert one[0]["exact_match"] == pytest.approx(two[0]["exact_match"])


def test_two_hosts_infer_into_one_file_equal_to_the_single_host_file(trained, tmp_path):
    checkpoint = trained / "one" / f"checkpoint_{STEPS}"

    def flags(name):
        return ["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH='{checkpoint}'",
                f"--gin.INFER_OUTPUT_DIR='{tmp_path / name}'", *TASK_FLAGS, "--gin.utils.DatasetConfig.batch_size=8"]

    _one_and_two_hosts("infer", flags, tmp_path)
    name = f"{tiny_task.TASK_NAME}-test.jsonl"
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [name]  # one file, no per-host copies
    one = (tmp_path / "one" / name).read_text().splitlines()
    two = (tmp_path / "two" / name).read_text().splitlines()
    assert len(one) == 12 and two == one
    # The last global batch (12 = 8 + 4 examples) was padded and its copies dropped.
    assert [json.loads(line)["example_id"] for line in two] == [f"test-{i}" for i in range(12)]
    # Host 1 decoded its rows without writing: process 0's line is the only report.
    assert "predictions ->" not in (tmp_path / "infer_two_1.log").read_text()


def test_each_host_feeds_only_its_rows_of_a_padded_global_batch(monkeypatch):
    import jax
    import tensorflow as tf

    from personalize_t5x.trainer import eval as evaluate_lib

    ds = tf.data.Dataset.from_tensor_slices({"x": np.arange(10, dtype=np.int32)}).enumerate()
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    seen = {}
    for host in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda host=host: host)
        seen[host] = [(indices.tolist(), batch["x"].tolist(), real)
                      for indices, batch, real in evaluate_lib.host_batches(ds, batch_size=6, data_size=4)]
    # Global batches of 8 (6 rounded up to the data axis): rows 0-3 on host 0, 4-7 on host 1;
    # the last batch (2 examples) is filled with copies of its first row.
    assert seen[0] == [(list(range(8)), [0, 1, 2, 3], 8), ([8, 9], [8, 9, 8, 8], 2)]
    assert seen[1] == [(list(range(8)), [4, 5, 6, 7], 8), ([8, 9], [8, 8, 8, 8], 2)]
