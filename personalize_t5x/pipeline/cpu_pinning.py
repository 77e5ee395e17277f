"""One core per worker process, for local runs where workers should not share cores.

XLA, BLAS and TensorFlow size their thread pools from the cores a process may run on, so
on a small machine a single worker already spreads over every core and a second worker
adds little. A worker that claims a core of its own (Linux `sched_setaffinity`) before
those libraries start runs one thread's worth of work, and N workers use N cores.

Cores are claimed through advisory locks on files named after them in the temp folder:
the first worker to lock `core-<i>.lock` owns core i until its process ends (the
kernel drops the lock then, however the process ends). Workers that find every core
taken stay unpinned, and say so.
"""
from __future__ import annotations

import logging
import os
import tempfile

_LOG = logging.getLogger(__name__)
_LOCK_DIR = os.path.join(tempfile.gettempdir(), "personalize_t5x-cores")
_claimed: tuple[int, int] | None = None  # (core, lock fd), kept open for the process's life


def claim_one_core() -> int | None:
    """Pins this process to a core no other claimant holds; returns it (None if none free).

    Idempotent within a process. Must run before the libraries whose thread pools should
    shrink are initialized (import JAX/TensorFlow after it).
    """
    global _claimed
    if _claimed is not None and _claimed[1] >= 0:
        return _claimed[0]
    if not hasattr(os, "sched_setaffinity"):
        _LOG.warning("cannot pin workers to cores on this platform; running unpinned")
        return None
    import fcntl

    os.makedirs(_LOCK_DIR, exist_ok=True)
    for core in sorted(os.sched_getaffinity(0)):
        fd = os.open(os.path.join(_LOCK_DIR, f"core-{core}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        os.sched_setaffinity(0, {core})
        _claimed = (core, fd)
        _LOG.info("worker %d pinned to core %d", os.getpid(), core)
        return core
    _LOG.warning("every core is claimed by another worker; worker %d runs unpinned", os.getpid())
    return None
