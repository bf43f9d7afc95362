"""MLflow requests sent from a few threads, in order within each run.

A search's driver carries every trial, and each request to a tracking server costs it a round trip
(about 20 ms to a local ``mlflow server``); sent from the driver's own thread, they cap the trials an
hour it can handle. Here the driver queues a run's writes and goes on: a small pool of threads sends
them, several runs at once, one run's in the order they were queued. A write that fails stalls
its run: it and the run's later writes wait, and are sent again before the run's next write (or
by :meth:`OrderedWrites.drain`), so a run never says FINISHED before its figures are in.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

log = logging.getLogger(__name__)

#: Requests in flight at once: enough to hide the round trips, few enough for a small server.
THREADS = 4

Write = tuple[Callable[..., Any], tuple[Any, ...]]


class Stalled(Exception):
    """A write not sent because an earlier write of its run failed."""


class OrderedWrites:
    """Run ``fn(*args)`` writes on a thread pool; those of one run in order, a run's failure kept."""

    def __init__(self, threads: int = THREADS) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="mlflow-writes")
        self._lock = threading.Lock()
        self._tails: dict[str, Future] = {}  # run id -> its last queued write
        self._stalled: dict[str, list[Write]] = {}  # run id -> writes to send again, in order
        self._errors: dict[str, BaseException] = {}  # run id -> why it stalled
        self._warned = False  # one line in the terminal for a store that refuses writes, not one a run

    def submit(self, run_id: str, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` after the run's earlier writes (and first those that failed)."""
        self._queue(run_id, [(fn, args)])

    def _queue(self, run_id: str, writes: list[Write]) -> None:
        while True:
            with self._lock:
                tail = self._tails.get(run_id)
                if run_id not in self._stalled or tail is None or tail.done():
                    # A stalled run's chain has settled: its failed write and every later one are
                    # in _stalled, in order; they go first, after nothing.
                    stalled = self._stalled.pop(run_id, [])
                    before = None if stalled else tail
                    if stalled:
                        self._errors.pop(run_id, None)
                    for write in stalled + writes:
                        before = self._pool.submit(self._send, run_id, before, write)
                    if before is not None:
                        self._tails[run_id] = before
                    return
            tail.exception()  # a failed chain still settling: wait for its end, then send it again

    def _send(self, run_id: str, before: Future | None, write: Write) -> None:
        if before is not None and before.exception() is not None:
            self._keep(run_id, write, None)
            raise Stalled(run_id)
        fn, args = write
        try:
            fn(*args)
        except Exception as exc:
            self._keep(run_id, write, exc)
            raise

    def _keep(self, run_id: str, write: Write, error: BaseException | None) -> None:
        with self._lock:
            self._stalled.setdefault(run_id, []).append(write)
            if error is not None:
                self._errors[run_id] = error
                if not self._warned:
                    self._warned = True
                    log.warning("MLflow refused a write (kept, and sent again with the run's next one): %s",
                                str(error).splitlines()[0] if str(error) else type(error).__name__)

    def wait(self) -> None:
        """Until every queued write has been sent or has failed."""
        with self._lock:
            tails = list(self._tails.values())
        for tail in tails:
            tail.exception()

    def drain(self) -> None:
        """Send everything queued, and once more what failed; raise the first error left."""
        self.wait()
        with self._lock:
            stalled = list(self._stalled)
        for run_id in stalled:
            self._queue(run_id, [])
        self.wait()
        with self._lock:
            errors = list(self._errors.values())
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Send what is queued, then stop the threads (what failed is not sent again)."""
        self.wait()
        self._pool.shutdown(wait=True)
