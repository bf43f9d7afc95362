"""Running a server (``smoothblock ui``'s MLflow server) as a child that stops with this process."""
from __future__ import annotations

import os
import signal
import subprocess
import time


class _Stop(Exception):
    pass


def serve(command: list[str]) -> int:
    """Run a server until it exits or this process gets SIGINT, SIGTERM or SIGHUP; then stop the
    server and everything it started (mlflow server runs uvicorn and job workers beside it).

    The server gets a process group of its own, so a signal reaches it only through here and the
    whole group goes down together: SIGTERM, then SIGKILL after 10 s."""
    def stop(signum, frame):
        raise _Stop

    handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    proc = None
    try:
        proc = subprocess.Popen(command, env=os.environ.copy(), start_new_session=True)
        return proc.wait()
    except _Stop:
        return 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if proc is not None:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group is gone
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


