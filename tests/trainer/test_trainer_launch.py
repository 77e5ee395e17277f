"""The launch scripts (launch/tpu, launch/gpu): the exact commands their --dry-run prints,
their refusals, and shellcheck."""
import os
import pathlib
import shlex
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = sorted([REPO / "launch" / "common.sh", *(REPO / "launch").glob("*/*.sh")])
TPU = {"TPU_NAME": "my-slice", "ZONE": "us-central2-b"}
RUN = {"MODEL_DIR": "gs://bucket/run", "TASK": "personalize_x_syn_ctx_author_mix"}


def _dry_run(script: str, *args: str, env: dict, fail: bool = False, path_dir: pathlib.Path = None):
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("SLURM_", "TPU_", "MODEL_", "ACCELERATOR", "NUM_PARTITIONS", "WORKER"))
                and k not in ("TASK", "ZONE", "PROJECT", "REPO_URL", "COORDINATOR")}
    full_env.update(env)
    if path_dir is not None:
        full_env["PATH"] = f"{path_dir}{os.pathsep}{full_env['PATH']}"
    result = subprocess.run(["bash", str(REPO / "launch" / script), "--dry-run", *args], env=full_env,
                            capture_output=True, text=True)
    if fail:
        assert result.returncode != 0, result.stdout
        return result.stderr
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def _one(commands):
    assert len(commands) == 1, commands
    return commands[0]


def test_tpu_create_single_host_and_pod_slice():
    create = _one(_dry_run("tpu/tpu_vm.sh", "create", env=TPU))
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-slice", "--zone=us-central2-b",
                      "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base"]
    pod = _one(_dry_run("tpu/tpu_vm.sh", "create", env={**TPU, "ACCELERATOR_TYPE": "v4-32", "PROJECT": "proj",
                                                        "RUNTIME_VERSION": "tpu-vm-v4-base"}))
    assert "--accelerator-type=v4-32" in pod and "--project=proj" in pod and "--version=tpu-vm-v4-base" in pod


def test_tpu_install_runs_on_every_worker_with_the_locked_jax():
    install = _one(_dry_run("tpu/tpu_vm.sh", "install", env={**TPU, "REPO_URL": "https://example.com/p.git"}))
    assert install[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-slice"]
    assert "--worker=all" in install and "--zone=us-central2-b" in install
    remote = next(a for a in install if a.startswith("--command="))[len("--command="):]
    assert "git clone https://example.com/p.git personalize-t5x" in remote
    assert "cd personalize-t5x && make install" in remote
    jax_version = next(line for line in (REPO / "requirements.lock").read_text().splitlines()
                       if line.startswith("jax==")).split("==")[1].split()[0]
    assert f"jax\\[tpu\\]=={jax_version}" in remote


def test_tpu_train_starts_the_trainer_on_all_workers_with_the_gin_flags_passed_through():
    train = _one(_dry_run("tpu/tpu_vm.sh", "train", "--gin.BATCH_SIZE=256", "--gin.DROPOUT_RATE=0.05",
                          env={**TPU, **RUN, "TRAIN_STEPS": "500", "MODEL_GIN": "models/t5_1_1_xl.gin"}))
    assert "--worker=all" in train
    remote = shlex.split(next(a for a in train if a.startswith("--command="))[len("--command="):])
    python = remote.index(".venv/bin/python")
    assert remote[:python] == ["cd", "personalize-t5x", "&&", "nohup"]
    flags = remote[python + 1:]
    assert flags[:2] == ["-m", "personalize_t5x.trainer.train"]
    for flag in ("--gin_file=models/t5_1_1_xl.gin", "--gin_file=runs/finetune.gin",
                 "--gin.MODEL_DIR='gs://bucket/run'", "--gin.MIXTURE_OR_TASK_NAME='personalize_x_syn_ctx_author_mix'",
                 "--gin.TASK_FEATURE_LENGTHS={'inputs': 1024, 'targets': 512}", "--gin.TRAIN_STEPS=500",
                 "--gin.BATCH_SIZE=256", "--gin.DROPOUT_RATE=0.05"):
        assert flag in flags, (flag, flags)
    assert flags[-4:] == [">", "train.log", "2>&1", "&"]


def test_tpu_logs_follow_one_worker_and_delete_is_quiet():
    logs = _one(_dry_run("tpu/tpu_vm.sh", "logs", env=TPU))
    assert "--worker=0" in logs and logs[-1] == "--command=tail -n +1 -F personalize-t5x/train.log"
    assert "--worker=3" in _one(_dry_run("tpu/tpu_vm.sh", "logs", env={**TPU, "WORKER": "3"}))
    delete = _one(_dry_run("tpu/tpu_vm.sh", "delete", env=TPU))
    assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "my-slice", "--zone=us-central2-b", "--quiet"]


def test_tpu_script_refuses_missing_settings_and_unknown_actions():
    assert "set ZONE" in _dry_run("tpu/tpu_vm.sh", "create", env={"TPU_NAME": "x"}, fail=True)
    assert "set MODEL_DIR" in _dry_run("tpu/tpu_vm.sh", "train", env=TPU, fail=True)
    assert "set REPO_URL" in _dry_run("tpu/tpu_vm.sh", "install", env=TPU, fail=True)
    assert "unknown action 'start'" in _dry_run("tpu/tpu_vm.sh", "start", env=TPU, fail=True)


def test_gpu_one_node_uses_every_gpu_with_model_partitions():
    train = _one(_dry_run("gpu/train.sh", "--gin.BATCH_SIZE=64", env={**RUN, "NUM_PARTITIONS": "4"}))
    assert train[:3] == [".venv/bin/python", "-m", "personalize_t5x.trainer.train"]
    assert "--gin.partitioning.PjitPartitioner.num_partitions=4" in train and train[-1] == "--gin.BATCH_SIZE=64"
    assert not any(a.startswith(("--coordinator_address", "--multiprocess_gpu")) for a in train)


def test_slurm_task_wires_jax_distributed_from_slurm_variables(tmp_path):
    scontrol = tmp_path / "scontrol"
    scontrol.write_text('#!/usr/bin/env bash\n[ "$1 $2" = "show hostnames" ] && printf "gpu-07\\ngpu-08\\n"\n')
    scontrol.chmod(0o755)
    slurm = {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_JOB_NODELIST": "gpu-[07-08]"}
    task = _one(_dry_run("gpu/slurm_train.sh", "--gin.TRAIN_STEPS=9", env={**RUN, **slurm, "NUM_PARTITIONS": "8"},
                         path_dir=tmp_path))
    assert task[:3] == [".venv/bin/python", "-m", "personalize_t5x.trainer.train"]
    assert task[3:7] == ["--multiprocess_gpu", "--coordinator_address=gpu-07:12345", "--process_count=2",
                         "--process_index=1"]
    assert "--gin.partitioning.PjitPartitioner.num_partitions=8" in task and task[-1] == "--gin.TRAIN_STEPS=9"
    assert "not inside a SLURM job" in _dry_run("gpu/slurm_train.sh", env=RUN, fail=True)


def test_slurm_submit_runs_one_task_per_node_through_srun():
    submit = _one(_dry_run("gpu/submit_slurm.sh", "--gin.BATCH_SIZE=512",
                           env={**RUN, "NODES": "4", "GPUS_PER_NODE": "8", "PARTITION": "a100"}))
    assert submit[0] == "sbatch"
    for flag in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--export=ALL", "--partition=a100"):
        assert flag in submit, (flag, submit)
    assert submit[-1] == "--wrap=srun launch/gpu/slurm_train.sh --gin.BATCH_SIZE=512"


def test_every_launch_script_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (`make test` installs Debian's shellcheck when it can)")
    result = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert len(SCRIPTS) >= 5
