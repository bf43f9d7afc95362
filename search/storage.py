"""Where a search keeps its results: Ray Tune's ``storage_path``, a local folder or a URI.

On a cluster this must be storage every node reaches (``s3://bucket/ray-results``, ``gs://...``,
or a path on a shared file system): Ray Tune writes trial results and checkpoints there and a trial
restarted on another node reads its checkpoint back from there. The driver keeps two small files
beside Ray's: the search's configuration (for ``--resume`` and the summary) and where its MLflow
records live. Both go through pyarrow's file systems, the layer Ray Tune itself uses, so a URI
and a local path behave the same.
"""
from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

from smoothblock.errors import ConfigError, first_line

from .tracking_store import redact, resolve_tracking_uri

SEARCH_FILE = "smoothblock-search.yaml"   # the search's configuration, for --resume and export
STATE_FILE = "smoothblock-search.json"    # where its MLflow records live


@dataclass(frozen=True)
class Storage:
    """A search results root.

    Attributes:
        uri: what Ray Tune gets as ``storage_path``: an absolute local path or a URI.
        fs, root: the file system behind ``uri`` and the root's path in it, resolved once
            (resolving an ``s3://`` URI asks the bucket's region over the network).
    """

    uri: str
    fs: pafs.FileSystem = field(compare=False, repr=False)
    root: str = field(compare=False, repr=False)

    @classmethod
    def from_arg(cls, storage: str | None) -> Storage:
        """``--storage``: a URI (``s3://``, ``gs://``, ``file://``), a path, or None for ./ray_results."""
        if storage and "://" in storage:
            uri = storage.rstrip("/")
            try:
                fs, root = pafs.FileSystem.from_uri(uri)
            except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise ConfigError(f"--storage {storage} is unusable: {first_line(exc)}") from None
            return cls(uri, fs, root)
        path = str(Path(storage).expanduser().absolute() if storage else Path.cwd() / "ray_results")
        return cls(path, pafs.LocalFileSystem(), path)

    def folder(self, name: str) -> str:
        """The search's folder, as Ray Tune names it (``Tuner.restore`` takes this)."""
        return f"{self.uri}/{name}"

    def exists(self, name: str, filename: str = "") -> bool:
        path = f"{self.root}/{name}" + (f"/{filename}" if filename else "")
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def has_match(self, name: str, pattern: str) -> bool:
        """Whether the search's folder holds a file whose name matches ``pattern`` (fnmatch)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/{name}"))
        except (FileNotFoundError, OSError):
            return False
        return any(fnmatch.fnmatch(info.base_name, pattern) for info in infos)

    def write_text(self, name: str, filename: str, text: str) -> None:
        self.fs.create_dir(f"{self.root}/{name}", recursive=True)
        with self.fs.open_output_stream(f"{self.root}/{name}/{filename}") as out:
            out.write(text.encode("utf-8"))

    def read_text(self, name: str, filename: str) -> str:
        with self.fs.open_input_stream(f"{self.root}/{name}/{filename}") as src:
            return src.read().decode("utf-8")

    def remove(self, name: str) -> None:
        """Delete the search's folder (a launch that failed before its first trial)."""
        try:
            self.fs.delete_dir(f"{self.root}/{name}")
        except (FileNotFoundError, OSError):
            pass

    def __str__(self) -> str:
        return self.uri


def resume_tracking_uri(store: Storage, name: str, mlflow_uri: str | None) -> str:
    """``--mlflow-uri``, else the URI the search was launched with, else the default."""
    if mlflow_uri or not store.exists(name, STATE_FILE):
        return resolve_tracking_uri(mlflow_uri)
    state = json.loads(store.read_text(name, STATE_FILE))
    if not state.get("credentials_removed"):
        return state["tracking_uri"]
    # The stored URI lost its password (never written to disk): the user's environment has it.
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError(f"search {name!r} logs to {state['tracking_uri']}, whose credentials are not stored; "
                          "pass --mlflow-uri or set MLFLOW_TRACKING_URI")
    return os.environ["MLFLOW_TRACKING_URI"]


def write_state_file(store: Storage, name: str, uri: str, experiment_id: str, parent_id: str) -> None:
    """Where the search's MLflow records live, beside Ray's results and its configuration."""
    store.write_text(name, STATE_FILE, json.dumps({
        "tracking_uri": redact(uri), "credentials_removed": redact(uri) != uri,
        "experiment_id": experiment_id, "parent_run_id": parent_id}) + "\n")
