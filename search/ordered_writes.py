"""MLflow writes of a search's runs, in order within each run, kept when the store refuses them.

A write that fails stalls its run: it and the run's later writes are kept, and sent again before
the run's next write (or by :meth:`OrderedWrites.drain`, at the search's end), so a run never says
FINISHED before its figures are in, and a store away for a while (a full disk freed, a server
restarted within the search) loses nothing; the driver goes on meanwhile, with one warning.

The writes are sent on the driver's thread, as they come. Sending them from a pool of threads was
measured and dropped: against a real ``mlflow server`` with its SQLite store
(``benchmarks/bench_driver.py``), writes from 1 or 4 threads cost a trial 0.09 s against 0.055 s
in line, since the store takes one write at a time and concurrent ones wait on its lock.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

log = logging.getLogger(__name__)

Write = tuple[Callable[..., Any], tuple[Any, ...]]


class OrderedWrites:
    """Send ``fn(*args)`` writes, those of one run in order; a run's failed write and the ones
    after it are kept and sent again first."""

    def __init__(self) -> None:
        self._stalled: dict[str, list[Write]] = {}  # run id -> writes to send again, in order
        self._errors: dict[str, BaseException] = {}  # run id -> why it stalled
        self._warned = False  # one line in the terminal for a store that refuses writes, not one a run

    def submit(self, run_id: str, fn: Callable[..., Any], *args: Any) -> None:
        """Send ``fn(*args)``, after the run's earlier writes that failed."""
        self._send(run_id, [(fn, args)])

    def _send(self, run_id: str, writes: list[Write]) -> None:
        writes = self._stalled.pop(run_id, []) + writes
        self._errors.pop(run_id, None)
        for i, (fn, args) in enumerate(writes):
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - kept, sent again, raised by drain() if it stays
                self._stalled[run_id] = writes[i:]
                self._errors[run_id] = exc
                if not self._warned:
                    self._warned = True
                    log.warning("MLflow refused a write (kept, and sent again with the run's next one): %s",
                                str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                return

    def drain(self) -> None:
        """Send once more what failed; raise the first error left."""
        for run_id in list(self._stalled):
            self._send(run_id, [])
        if self._errors:
            raise next(iter(self._errors.values()))
