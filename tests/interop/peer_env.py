"""Upstream T5X as a peer: its virtualenv, its environment, and running its entry points.

The virtualenv is the one `make peer-venv` builds (REPO/.peer-venv, or the folder named
by PERSONALIZE_T5X_PEER_VENV): upstream T5X from ../shared/peers, pinned to this
project's requirements.lock. CI's `make test` builds it before the tests when
../shared/peers is present; run alone, `peer_python()` builds it once (under a file lock,
so parallel test workers wait for one build). Without ../shared/peers every caller skips
with the reason.
"""
from __future__ import annotations

import fcntl
import os
import pathlib
import subprocess
import sys
from typing import Optional, Sequence

import pytest

from shared_paths import REPO_ROOT, SHARED

PEERS = SHARED / "peers"
VENV_ENV = "PERSONALIZE_T5X_PEER_VENV"
# Minutes a first build may take (about 1.5 with a warm pip cache on 2 cores).
BUILD_TIMEOUT_S = 1800


def peer_venv() -> pathlib.Path:
    return pathlib.Path(os.environ.get(VENV_ENV, REPO_ROOT / ".peer-venv")).resolve()


def peer_python() -> pathlib.Path:
    """The peer virtualenv's python, building the virtualenv first when needed (or skips)."""
    venv = peer_venv()
    stamp = venv / ".installed-stamp"
    if not (PEERS / "install-t5x.sh").exists():
        pytest.skip(f"{PEERS} is absent (a checkout without ../shared/peers): upstream T5X cannot be installed")
    if not stamp.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        with open(venv.parent / f".{venv.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not stamp.exists():
                result = subprocess.run(["make", "-s", "peer-venv", f"PEER_VENV={venv}", f"PYTHON={sys.executable}"],
                                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
                if result.returncode != 0:
                    raise RuntimeError(f"make peer-venv failed (exit {result.returncode}):\n"
                                       f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return venv / "bin" / "python"


def peer_environment(*, devices: int = 1, **extra: str) -> dict[str, str]:
    """The environment of a peer subprocess: this repository importable (`import tasks`),
    JAX on `devices` CPU devices, TensorFlow quiet."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    env.update(PYTHONPATH=os.fspath(REPO_ROOT), JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.update(extra)
    return env


def run_logged(args: Sequence[str], *, cwd: pathlib.Path, env: dict, log: pathlib.Path,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs a command with its output in `log`; a failure raises with the log's tail."""
    with open(log, "w") as out:
        result = subprocess.run(list(map(os.fspath, args)), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                timeout=timeout)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
        raise AssertionError(f"{' '.join(map(str, args[:3]))} ... exited {result.returncode}; log {log}:\n{tail}")
    return result


def t5x_module(name: str, gin_files: Sequence[os.PathLike | str], flags: Sequence[str], *, cwd: pathlib.Path,
               env: dict, log_name: Optional[str] = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m t5x.<name>` in the peer virtualenv.

    `cwd` must not hold a `runs/` or `models/` folder: gin resolves `include 'runs/...'`
    through importlib first, and a namespace package of that name breaks T5X's includes.
    """
    args = [peer_python(), "-m", f"t5x.{name}", *(f"--gin_file={g}" for g in gin_files), *flags]
    return run_logged(args, cwd=cwd, env=env, log=cwd / f"{log_name or name}.log", timeout=timeout)
