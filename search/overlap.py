"""Start-up steps that wait on different things, run at once."""
from __future__ import annotations

import threading
from typing import Any, Callable


def side_by_side(on_main: Callable[[], Any], *on_threads: Callable[[], Any]) -> list[Any]:
    """Run ``on_main`` on this thread (Ray's start wants the main thread) and each of ``on_threads``
    on a thread of its own, at once: each takes seconds of waiting on processes, disks or a server,
    and none needs another. Returns their results (``on_main``'s first) once all have ended; raises
    the error of the first of ``on_threads`` that failed (the input checks), else ``on_main``'s."""
    results: list[Any] = [None] * len(on_threads)
    errors: list[BaseException | None] = [None] * len(on_threads)

    def run(i: int) -> None:
        try:
            results[i] = on_threads[i]()
        except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread below
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,), name=f"start-up-{i}", daemon=True) for i in range(len(on_threads))]
    for thread in threads:
        thread.start()
    try:
        first = on_main()
    finally:
        for thread in threads:
            thread.join()
        failed = next((e for e in errors if e is not None), None)
        if failed is not None:
            raise failed
    return [first, *results]
