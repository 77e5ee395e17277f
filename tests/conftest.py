"""Test-wide environment, set before anything imports jax, tensorflow or seqio.

8 fake CPU devices let partitioning tests build real meshes; GPUs are hidden so a
developer's accelerator never changes numerics; TensorFlow is kept quiet.
"""
import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """../shared beside the checkout (real data and upstream fixtures)."""
    return SHARED


def require_shared(relative: str) -> pathlib.Path:
    """Returns ../shared/<relative>, skipping the test with a reason when it is absent."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (a fresh clone without ../shared); this test needs it")
    return path
