"""Event loops for synchronous orbax calls that let TensorStore's reads finish first.

Used by every orbax restore and metadata read: the trainer's checkpoints and the T5X
checkpoint importer (network/), which is why it lives on the ground floor.
"""
from __future__ import annotations

import asyncio
import contextlib
import time

# How long a closing orbax loop waits for reads still in flight (only ever after a failure).
_DRAIN_SECONDS = 300.0


class _DrainingEventLoop(asyncio.SelectorEventLoop):
    """An asyncio loop that lets its unfinished tasks finish before it closes.

    orbax runs each restore in a fresh loop and closes it as soon as the restore raises
    (`asyncio_utils.run_sync`). When one read of a damaged checkpoint fails, asyncio.gather
    raises but leaves the sibling reads running: each awaits a TensorStore future whose
    completion callback, called from TensorStore's C++ threads, does
    `loop.call_soon_threadsafe`; on the closed loop that raises `RuntimeError: Event loop
    is closed`, which TensorStore prints as an unraisable exception, once per read, at any
    later time. Cancelling the tasks does not help (TensorStore still calls back when the
    read ends); running the loop until they are done does. A successful restore leaves no
    tasks, so this only ever waits after a failure, for reads that were in flight anyway.
    """

    def close(self) -> None:
        deadline = time.monotonic() + _DRAIN_SECONDS
        while not self.is_closed() and not self.is_running():
            pending = asyncio.all_tasks(self)
            if not pending or time.monotonic() >= deadline:
                break
            done, _ = self.run_until_complete(asyncio.wait(pending, timeout=deadline - time.monotonic()))
            for task in done:  # their errors are the failed restore's siblings: already reported
                if not task.cancelled():
                    task.exception()
        super().close()


class _DrainingPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _DrainingEventLoop()


@contextlib.contextmanager
def draining_orbax_loops():
    """Synchronous orbax calls made inside get loops that finish their reads before closing.

    orbax takes its loops from `asyncio.new_event_loop()`, i.e. from the event loop policy
    (orbax has no other hook), so the policy is swapped for the duration of the call. A
    loop another thread creates meanwhile drains too, which only ever waits for its own
    unfinished tasks.
    """
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_DrainingPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(previous)
