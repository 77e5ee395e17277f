"""The launch scripts pass T5X's multi-host flags and the gin macros to the trainer."""
import os
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[2]


def _fake(tmp_path, name):
    """A stand-in executable that records its arguments, one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / name
    exe.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{tmp_path}/{name}.args"\n')
    exe.chmod(0o755)
    return bin_dir


def test_multi_gpu_script_passes_t5x_multihost_flags(tmp_path):
    bin_dir = _fake(tmp_path, "python3")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", COORDINATOR="host0:1234", NUM_HOSTS="2",
               HOST_INDEX="1", MODEL_DIR="/shared/run", TASK="personalize_x_immed_ctx", NUM_PARTITIONS="4")
    env.pop("SLURM_PROCID", None)
    result = subprocess.run(["bash", str(REPO / "launch" / "multi_gpu_train.sh"), "--gin.BATCH_SIZE=64"],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "python3.args").read_text().splitlines()
    assert args[:2] == ["-m", "personalize_t5x.trainer.train"]
    for flag in ("--multiprocess_gpu", "--coordinator_address=host0:1234", "--process_count=2", "--process_index=1",
                 "--gin.MODEL_DIR='/shared/run'", "--gin.MIXTURE_OR_TASK_NAME='personalize_x_immed_ctx'",
                 "--gin.partitioning.PjitPartitioner.num_partitions=4", "--gin.BATCH_SIZE=64",
                 "--gin.TASK_FEATURE_LENGTHS={'inputs': 1024, 'targets': 512}"):
        assert flag in args, (flag, args)


def test_multi_gpu_script_refuses_missing_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_DIR", "TASK", "SLURM_PROCID")}
    result = subprocess.run(["bash", str(REPO / "launch" / "multi_gpu_train.sh")], env=env,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "set MODEL_DIR" in result.stderr


def test_tpu_vm_script_runs_the_trainer_on_every_worker(tmp_path):
    bin_dir = _fake(tmp_path, "gcloud")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TPU_NAME="v4-32", ZONE="us-central2-b",
               MODEL_DIR="gs://bucket/run", TASK="personalize_x_immed_ctx")
    result = subprocess.run(["bash", str(REPO / "launch" / "tpu_vm_train.sh"), "--gin.TRAIN_STEPS=5"],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "gcloud.args").read_text().splitlines()
    assert args[:5] == ["compute", "tpus", "tpu-vm", "ssh", "v4-32"] and "--worker=all" in args
    command = args[args.index("--command") + 1]
    assert "python3 -m personalize_t5x.trainer.train" in command
    assert "--gin.MODEL_DIR=\"'gs://bucket/run'\"" in command and "--gin.TRAIN_STEPS=5" in command
