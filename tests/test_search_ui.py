"""``smoothblock ui``: the MLflow UI for the store a search used, on 127.0.0.1 only."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from search.cli import main

from .search_fixtures import free_port

pytestmark = pytest.mark.integration


def _outward_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for_health(ui: subprocess.Popen, port: int) -> None:
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                assert response.status == 200
                return
        except OSError:
            if ui.poll() is not None or time.time() > deadline:
                raise AssertionError(f"the UI did not come up: {ui.stdout.read()}") from None
            time.sleep(0.5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_stopped_by_a_signal_leaves_nothing_running(tmp_path, sig):
    port = free_port()
    # As a shell starts it: in the caller's process group, SIGINT at its default.
    ui = subprocess.Popen([sys.executable, "-m", "search.cli", "ui", "--port", str(port)], cwd=tmp_path,
                          env={**os.environ, "MLFLOW_TRACKING_URI": ""}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for_health(ui, port)
        started = _descendants(ui.pid)
        assert started  # the server and its workers
        os.kill(ui.pid, sig)
        assert ui.wait(timeout=60) == 0
        deadline = time.time() + 30
        while any(_alive(p) for p in started) and time.time() < deadline:
            time.sleep(0.5)
        assert not [p for p in started if _alive(p)]
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if ui.poll() is None:
            ui.kill()


def test_ui_serves_the_working_folders_store_on_loopback_only(tmp_path):
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "search.cli", "ui", "--port", str(port)], cwd=tmp_path,
                          env={**os.environ, "MLFLOW_TRACKING_URI": ""}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for_health(ui, port)
        outward = _outward_address()
        if outward is not None:  # a UI bound to every interface would answer here too
            with pytest.raises(OSError):
                socket.create_connection((outward, port), timeout=2).close()
        assert (tmp_path / "mlflow.db").is_file()  # the default store: sqlite in the working folder
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
    assert f"http://127.0.0.1:{port}" in ui.stdout.read()


def test_ui_for_a_tracking_server_points_at_it(capsys):
    assert main(["ui", "--mlflow-uri", "http://10.0.0.5:5000"]) == 0
    assert "http://10.0.0.5:5000" in capsys.readouterr().out


def test_processes_opening_a_new_store_at_once_all_find_it(tmp_path):
    # A search and `smoothblock ui` starting together on a new sqlite store: without the store's
    # lock one of them died in the schema setup ("table ... already exists").
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = f"from search.tracking import connect; connect({uri!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(4)]
    outputs = [(p.wait(timeout=300), p.stdout.read()) for p in procs]
    assert all(rc == 0 for rc, _ in outputs), outputs
