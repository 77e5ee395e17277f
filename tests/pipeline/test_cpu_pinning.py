"""Worker processes claim distinct cores; a process past the last core stays unpinned."""
import os
import subprocess
import sys

import pytest

CLAIM = """
import os, sys
from personalize_t5x.pipeline import cpu_pinning
core = cpu_pinning.claim_one_core()
again = cpu_pinning.claim_one_core()
print(core, again, sorted(os.sched_getaffinity(0)), flush=True)
sys.stdin.read()  # hold the claim until the test closes stdin
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="sched_setaffinity is Linux-only")
def test_each_process_claims_its_own_core_until_it_exits(tmp_path):
    cores = sorted(os.sched_getaffinity(0))
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # a lock folder of this test's own
    holders = [subprocess.Popen([sys.executable, "-c", CLAIM], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, env=env) for _ in range(len(cores) + 1)]
    try:
        lines = [holder.stdout.readline().split(" ", 2) for holder in holders]
    finally:
        for holder in holders:
            holder.stdin.close()
            holder.wait(timeout=30)
    claimed = [line[0] for line in lines]
    pinned = [c for c in claimed if c != "None"]
    # Every core went to exactly one process, the extra one stayed unpinned...
    assert sorted(int(c) for c in pinned) == cores
    assert claimed.count("None") == 1
    for core, again, affinity in lines:
        assert again == core  # a second claim in the same process keeps the first
        if core != "None":
            assert affinity.strip() == f"[{core}]"  # ...and a pinned process runs on its core only
    # The claims ended with their processes: a new process gets a core again.
    out = subprocess.run([sys.executable, "-c", CLAIM], input="", capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split(" ", 1)[0] == str(cores[0])
