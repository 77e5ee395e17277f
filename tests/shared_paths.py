"""Where the tests find ../shared (real data, upstream fixtures), and the skip when absent.

A module of its own rather than conftest.py: several conftest.py files exist under tests/,
and `from conftest import ...` would pick whichever pytest imported last.
"""
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"


def require_shared(relative: str) -> pathlib.Path:
    """Returns ../shared/<relative>, skipping the test with a reason when it is absent."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (a fresh clone without ../shared); this test needs it")
    return path
FIXTURES = REPO_ROOT / "tests" / "fixtures"
