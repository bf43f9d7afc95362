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


def test_ui_serves_the_working_folders_store_on_loopback_only(tmp_path):
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "search.cli", "ui", "--port", str(port)], cwd=tmp_path,
                          env={**os.environ, "MLFLOW_TRACKING_URI": ""}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                if ui.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"the UI did not come up: {ui.stdout.read()}") from None
                time.sleep(0.5)
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
