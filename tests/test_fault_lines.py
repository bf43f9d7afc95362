"""What a fault's line says, from the exceptions a search meets (the real faults: test_faults.py)."""
from __future__ import annotations

import errno
import os

from search.faults import EX_IOERR, EX_OSERR, EX_SOFTWARE, EX_UNAVAILABLE, Where, diagnose, line, trial_cause


def _caused(outer: Exception, inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except Exception as exc:  # noqa: BLE001
        return exc


WHERE = Where("s", "/results/s", "sqlite:////data/mlflow.db")


def test_a_full_disk_is_named_by_the_path_that_refused_the_write():
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/ckpt/last.pt")
    assert diagnose(_caused(RuntimeError("trial failed"), full), WHERE).what == "the disk is full: /ckpt/last.pt"
    sqlite = RuntimeError("(sqlite3.OperationalError) database or disk is full")
    fault = diagnose(sqlite, WHERE)
    assert fault.status == EX_IOERR and fault.what == "the disk is full: /data/mlflow.db (the MLflow store)"
    read_only = OSError(errno.EROFS, os.strerror(errno.EROFS), "/results/s/x.yaml")
    assert diagnose(read_only, WHERE).what == "cannot write /results/s/x.yaml: Read-only file system"


def test_services_that_went_away_and_anything_else():
    server = Where("s", "/results/s", "http://127.0.0.1:5000")
    gone = RuntimeError("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed: Max retries exceeded")
    assert diagnose(gone, server).status == EX_UNAVAILABLE and "stopped answering" in diagnose(gone, server).what
    oom = RuntimeError("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.")
    assert diagnose(oom, WHERE).status == EX_OSERR
    other = diagnose(ValueError("something odd"), WHERE)
    assert other.status == EX_SOFTWARE and other.what == "the search stopped: ValueError: something odd"


def test_the_line_names_the_fault_the_way_on_and_the_log_holding_the_traceback(tmp_path):
    where = Where("s", str(tmp_path / "s"), "sqlite:////data/mlflow.db", resume_flags=f"--storage {tmp_path}")
    text, status = line(_caused(RuntimeError("x"), OSError(errno.ENOSPC, "No space left on device", "/d")), where)
    assert status == EX_IOERR and text.startswith("smoothblock: error: the disk is full: /d;")
    assert f"continue with: smoothblock search --resume s --storage {tmp_path}" in text
    log = tmp_path / "s" / "smoothblock-error.log"
    assert text.endswith(f"(traceback in {log})") and "Traceback" in log.read_text()
    fresh = Where("s", str(tmp_path / "t"), "sqlite:////data/mlflow.db", resumable=False)
    assert "the search had not started: run the command again" in line(ValueError("v"), fresh)[0]


def test_a_trials_failure_in_a_few_words():
    unavailable = ("ray.exceptions.ActorUnavailableError: The actor e26345 is unavailable: The actor is temporarily "
                   "unavailable: RpcError: RPC error: Socket closed rpc_code: 14.")
    assert trial_cause(unavailable) == "its node was lost"
    died = "The actor died because its node has died. Node Id: 0123456789abcdef0123 ip: 10.0.0.7"
    assert trial_cause(died) == "its node was lost (node 0123456789ab at 10.0.0.7)"
    assert trial_cause("Traceback ...\nRuntimeError: CUDA out of memory. Tried to allocate 2 GiB") == "out of memory"
    assert trial_cause("Traceback ...\n  File x\nValueError: loss is nan\n") == "ValueError: loss is nan"
