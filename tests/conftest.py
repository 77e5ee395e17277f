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

from shared_paths import SHARED, require_shared  # noqa: E402,F401  (tests import it from shared_paths)


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """../shared beside the checkout (real data and upstream fixtures)."""
    return SHARED
