"""A search stopped by a fault: what the user reads (one line), the exit status, and the log.

A fault is not bad input (that is a ConfigError: one line, status 2, nothing created): the search
had started, and what it measured is kept. :func:`diagnose` names the faults a user can act on
from the exception and its causes: a full disk or one that refuses writes (naming the path: the
MLflow store, the results folder, a checkpoint), the tracking store gone past MLflow's own
retries, the Ray cluster gone. Anything else is reported the same way, by its first line. The
full traceback goes to ``smoothblock-error.log`` in the search's results folder (or the temporary
folder, when that one cannot take it); the line names the file and the command that continues.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import socket
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

from smoothblock.errors import SmoothBlockError, first_line

#: Exit statuses, from BSD's sysexits: the environment failed, not the input (2).
EX_SOFTWARE, EX_UNAVAILABLE, EX_OSERR, EX_IOERR = 70, 69, 71, 74
LOG_FILE = "smoothblock-error.log"

_FULL = ("No space left on device", "database or disk is full", "Disk quota exceeded")
_READ_ONLY = ("Read-only file system", "Permission denied", "attempt to write a readonly database")
_UNREACHABLE = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection",
                "Read timed out", "RemoteDisconnected")
_CLUSTER_GONE = ("Failed to connect to GCS", "GCS has been unreachable", "Ray has not been started",
                 "The node with node id", "RaySystemError", "ray client connection")


@dataclass(frozen=True)
class Fault:
    """What stopped a search, in the user's words, and the exit status that says so."""

    what: str
    status: int


@dataclass(frozen=True)
class Where:
    """What a fault's line names: the search, its folder, its tracking store, how to resume."""

    name: str
    folder: str
    tracking_uri: str
    resumable: bool = True  # whether --resume has something to go on (the configuration was written)
    resume_flags: str = ""  # what --resume needs besides the name

    @classmethod
    def of(cls, name: str, folder: str, tracking_uri: str, storage: str | None, address: str | None) -> Where:
        # --resume finds the tracking store in the results folder's state file: the folder and the
        # cluster are what it needs.
        flags = [f"--storage {storage}" if storage else "", f"--address {address}" if address else ""]
        return cls(name, folder, tracking_uri, resume_flags=" ".join(f for f in flags if f))


class SearchStopped(Exception):
    """A started search stopped by ``error``; ``where`` says what the user's line names."""

    def __init__(self, where: Where, error: BaseException) -> None:
        super().__init__(str(error))
        self.where, self.error = where, error


#: The head watches (:func:`watch_head`) of the search running in this process: stopped when it
#: returns, since a process that goes on (a notebook, the tests) may shut the cluster down later.
_WATCHES: list[threading.Event] = []


@contextlib.contextmanager
def stopped_as(where: Where, resumable: Callable[[], bool]) -> Iterator[None]:
    """Within the block, a fault (anything but bad input or Ctrl-C) becomes :class:`SearchStopped`;
    at its end, the head watches started within stop."""
    try:
        yield
    except (SmoothBlockError, SearchStopped):
        raise
    except Exception as exc:
        try:
            can = resumable()
        except Exception:  # noqa: BLE001 - the disk that failed may not even answer this
            can = True
        raise SearchStopped(dataclasses.replace(where, resumable=can), exc) from exc
    finally:
        while _WATCHES:
            _WATCHES.pop().set()


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _store_path(uri: str) -> str:
    parts = urlsplit(uri)
    return uri[len("sqlite:///"):] if parts.scheme == "sqlite" else f"the tracking server's store ({uri})"


def diagnose(exc: BaseException, where: Where) -> Fault:
    """The fault behind ``exc`` (looking through its causes), named for the user."""
    texts = []
    for cause in _chain(exc):
        text = str(cause)
        texts.append(text)
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return Fault(f"the disk is full: {cause.filename or _guess_path(text, where)}", EX_IOERR)
        if isinstance(cause, OSError) and cause.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return Fault(f"cannot write {cause.filename or _guess_path(text, where)}: {os.strerror(cause.errno)}",
                         EX_IOERR)
    joined = "\n".join(texts)
    if any(marker in joined for marker in _FULL):
        return Fault(f"the disk is full: {_guess_path(joined, where)}", EX_IOERR)
    if any(marker in joined for marker in _READ_ONLY):
        return Fault(f"cannot write {_guess_path(joined, where)}: it is read-only", EX_IOERR)
    if where.tracking_uri.startswith(("http://", "https://")) and any(m in joined for m in _UNREACHABLE):
        return Fault(f"the MLflow tracking server {where.tracking_uri} stopped answering (past MLflow's retries)",
                     EX_UNAVAILABLE)
    if any(marker in joined for marker in _OUT_OF_MEMORY):
        return Fault(f"a node ran out of memory{_node(joined)} (fewer trials at once, a smaller attack_rows, "
                     "or nodes with more memory)", EX_OSERR)
    if any(marker in joined for marker in _CLUSTER_GONE):
        return Fault("the Ray cluster is gone (its head node stopped answering)", EX_UNAVAILABLE)
    return Fault(f"the search stopped: {type(exc).__name__}: {first_line(exc)}", EX_SOFTWARE)


def _guess_path(text: str, where: Where) -> str:
    """The path a full or read-only disk refused: the MLflow store when SQLite says so, else the
    results folder."""
    if "database" in text or "sqlite" in text.lower():
        return f"{_store_path(where.tracking_uri)} (the MLflow store)"
    return f"{where.folder} (the results folder)"


def write_log(exc: BaseException, where: Where, more: str = "") -> str | None:
    """The full traceback (and ``more``) in the search's folder (or the temporary folder); its
    path, or None."""
    text = "".join(traceback.format_exception(exc)) + more
    candidates = [Path(where.folder) / LOG_FILE] if "://" not in where.folder else []
    candidates.append(Path(tempfile.gettempdir()) / f"smoothblock-{where.name}-error.log")
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as log:
                log.write(text)
            return str(path)
        except OSError:
            continue
    return None


def line(exc: BaseException, where: Where, more: str = "") -> tuple[str, int]:
    """The one line a stopped search prints, and its exit status; the traceback (and ``more``)
    written first."""
    fault = diagnose(exc, where)
    log = write_log(exc, where, more)
    details = f" (traceback in {log})" if log else " (the traceback could not be written anywhere)"
    if not where.resumable:
        return f"smoothblock: error: {fault.what}; the search had not started: run the command again{details}", \
            fault.status
    resume = f"smoothblock search --resume {where.name}" + (f" {where.resume_flags}" if where.resume_flags else "")
    return (f"smoothblock: error: {fault.what}; the finished trials are kept (Ray's results in {where.folder}, "
            f"MLflow's runs); continue with: {resume}{details}"), fault.status


_NODE_LOST = ("ActorDiedError", "ActorUnavailableError", "NodeDiedError", "its node has died", "node has died",
              "The actor died unexpectedly", "RayActorError", "WorkerCrashedError",
              # What the trial's error file holds when its node went without a word (no class name):
              "The actor is temporarily unavailable", "RpcError: RPC error: Socket closed")
_OUT_OF_MEMORY = ("OutOfMemoryError", "running low on memory", "can't allocate memory", "CUDA out of memory",
                  "MemoryError")


def trial_cause(error: str) -> str:
    """Why a trial failed, in a few words, from its error trace: its node lost (naming the node where
    Ray says which), memory exhausted, or the error's last line."""
    if any(marker in error for marker in _OUT_OF_MEMORY):
        return "out of memory" + _node(error)
    if any(marker in error for marker in _NODE_LOST):
        return "its node was lost" + _node(error)
    lines = [text.strip() for text in error.strip().splitlines() if text.strip()]
    return lines[-1][:300] if lines else "failed without an error message"


def _node(error: str) -> str:
    found = re.search(r"(?:node (?:id|ID)|NodeID|Node ID)[:= ]+([0-9a-f]{8,})", error, re.IGNORECASE)
    address = re.search(r"\b(\d{1,3}(?:\.\d{1,3}){3})\b", error)
    named = [f"node {found.group(1)[:12]}" if found else "", f"at {address.group(1)}" if address else ""]
    return f" ({' '.join(n for n in named if n)})" if any(named) else ""


def watch_head(gcs_address: str, where: Where, every: float = 2.0, misses: int = 3) -> threading.Event:
    """A thread that ends the process in one line when the cluster's head (its GCS at
    ``gcs_address``, HOST:PORT) stops taking connections ``misses`` times in a row: Ray's own end
    for a driver whose GCS is gone is a C++ log line and exit status 1, a minute later. Returns the
    event that stops the watch (set it when the search is over); it stops by itself once Ray is
    shut down."""
    import ray

    host, _, port = gcs_address.rpartition(":")
    stop = threading.Event()

    def watch() -> None:
        missed = 0
        while not stop.wait(every) and ray.is_initialized():
            try:
                socket.create_connection((host, int(port)), timeout=every).close()
                missed = 0
            except OSError:
                missed += 1
            if missed >= misses and not stop.is_set():
                gone = ConnectionError(f"Failed to connect to GCS at {gcs_address} ({misses} tries, {every:g} s apart)")
                text, status = line(gone, where, _stacks())
                close_progress_bars()
                print(text, file=sys.stderr, flush=True)
                os._exit(status)  # Ray's threads would otherwise end the process their own way

    threading.Thread(target=watch, name="watch-head", daemon=True).start()
    _WATCHES.append(stop)
    return stop


def _stacks() -> str:
    """Where each of the driver's threads was (what a traceback would have shown)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return "".join(f"\nThread {names.get(ident, ident)}:\nTraceback (most recent call last):\n"
                   + "".join(traceback.format_stack(frame)) for ident, frame in sys._current_frames().items())


def close_progress_bars() -> None:
    """Close the progress bar above a fault's line (not redrawn after it)."""
    from tqdm import tqdm

    for bar in list(tqdm._instances):
        bar.close()
