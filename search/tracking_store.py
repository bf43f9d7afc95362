"""Where MLflow runs are kept: the tracking URI a command uses, a client checked to answer, and
the lock under which a new sqlite store is created."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mlflow import MlflowClient

from smoothblock.errors import ConfigError, first_line


def resolve_tracking_uri(uri: str | None) -> str:
    """``--mlflow-uri``, else MLFLOW_TRACKING_URI, else an sqlite store in the working folder."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def redact(uri: str) -> str:
    """``uri`` without a password (``postgresql://user:***@host/db``): what files and logs may hold."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def fail_fast(timeout_s: int = 5):
    """MLflow's HTTP client retries an unreachable server for minutes; a check should take seconds."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(timeout_s))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


#: Tracking URIs by their redacted form, for this driver process only: the Tune callback is
#: pickled into Ray's experiment state with the redacted URI and finds the real one here.
_FULL_URIS: dict[str, str] = {}


@contextlib.contextmanager
def store_lock(uri: str):
    """For an sqlite store, hold ``<file>.lock`` (an exclusive flock) within the block.

    Two processes opening a *new* sqlite store at once both run its schema setup, and one dies with
    ``table ... already exists``; the first open of each process (a search, ``smoothblock ui``)
    happens under this lock, so one creates the tables and the other finds them."""
    parts = urlsplit(uri)
    if parts.scheme != "sqlite":
        yield
        return
    path = Path(uri[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def connect(uri: str) -> MlflowClient:
    """A client for ``uri``, checked to answer (ConfigError naming the URI if it does not); an
    sqlite store that does not exist yet is created under :func:`store_lock`."""
    _FULL_URIS[redact(uri)] = uri
    with fail_fast(), store_lock(uri):
        try:
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
        except Exception as exc:  # connection refused, bad scheme, unreadable store: all one line
            reason = first_line(exc).replace(uri, redact(uri))
            parts = urlsplit(uri)
            if parts.password:
                reason = reason.replace(parts.password, "***")
            raise ConfigError(f"MLflow tracking store {redact(uri)} is unreachable: {reason}") from None
    return client
