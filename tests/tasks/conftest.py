"""Fixtures of the task tests: a data directory with one dataset (task_fixtures.py)."""
from __future__ import annotations

import pathlib

import pytest
import seqio  # imported once per test process (~5 s)

from task_fixtures import write_fixture_dataset
from personalize_t5x.tasks import registry  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """A PERSONALIZE_T5X_DATA_DIR holding one dataset, `fixture`."""
    root = tmp_path_factory.mktemp("data")
    write_fixture_dataset(root / "fixture")
    return root


@pytest.fixture(scope="session")
def features_dir(data_dir) -> pathlib.Path:
    return data_dir / "fixture" / "features"


@pytest.fixture(autouse=True)
def clean_registries():
    """Every test starts with empty SeqIO registries (seqio.test_utils); afterwards the
    registrations other test modules made at import time are put back, so running the
    whole suite in one process does not depend on the order of its modules."""
    import personalize_t5x.tasks.registry

    saved = (dict(seqio.TaskRegistry._REGISTRY), dict(seqio.MixtureRegistry._REGISTRY),
             dict(registry._REGISTERED))

    def clear():
        seqio.test_utils.clear_tasks()
        seqio.test_utils.clear_mixtures()
        registry._REGISTERED.clear()

    clear()
    yield
    clear()
    seqio.TaskRegistry._REGISTRY.update(saved[0])
    seqio.MixtureRegistry._REGISTRY.update(saved[1])
    registry._REGISTERED.update(saved[2])
