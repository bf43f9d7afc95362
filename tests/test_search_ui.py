"""``smoothblock ui``: the MLflow UI for the store a search used, on 127.0.0.1 only."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from search.cli import main

from .search_fixtures import free_port, local_ray  # noqa: F401

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


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="no chromium/chromedriver here (.ci/run installs Debian's)")
def test_the_ui_shows_a_real_search_in_a_real_browser(tmp_path, image_folder, local_ray, capsys):
    """A finished search, its store served by `smoothblock ui`, read in headless Chromium: the
    experiment, the child runs by their defense, their parameters and metrics, the plots. The
    compare view's screenshot goes to $SMOOTHBLOCK_SCREENSHOT when set (README's docs/mlflow-compare.png)."""
    from mlflow import MlflowClient
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from search import tracking

    from .test_search import _posthoc

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["search", "--config", _posthoc(tmp_path, image_folder), "--name", "browser-e2e",
                 "--mlflow-uri", uri, "--storage", str(tmp_path / "results")]) == 0
    capsys.readouterr()
    client = MlflowClient(uri)
    experiment = tracking.find_experiment(client, "browser-e2e")
    parent = tracking.parent_run_id(client, experiment.experiment_id)
    children = tracking.child_runs(client, experiment.experiment_id, parent)

    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "search.cli", "ui", "--mlflow_uri", uri, "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(argument)
    browser = None
    try:
        _wait_for_health(ui, port)
        browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        base = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}"

        def page_text(url: str, *expected: str) -> str:
            browser.get(url)
            deadline = time.time() + 60
            while True:  # the UI is a single-page app: wait until it has drawn what is expected
                text = browser.find_element("tag name", "body").text
                if all(e in text for e in expected) or time.time() > deadline:
                    return text
                time.sleep(1)

        names = [c.info.run_name for c in children]
        text = page_text(base, "browser-e2e")
        assert "browser-e2e" in text  # the experiment, its parent run listed
        runs = json.dumps([c.info.run_id for c in children])
        compare = f"http://127.0.0.1:{port}/#/compare-runs?runs={runs}&experiments=[\"{experiment.experiment_id}\"]"
        text = page_text(compare, *names, "keep_prob", "Metrics")
        for name in names:  # each trial by its defense
            assert name in text
        assert "keep_prob" in text and "block_size" in text  # parameters
        # Metrics: the table draws its first rows only (alphabetically; audit_* come before robust_acc).
        shown = [m for m in set().union(*(c.data.metrics for c in children)) if m in text.split()]
        assert "Metrics" in text and len(shown) >= 3, shown
        time.sleep(5)  # the parallel-coordinates plot draws after the tables
        browser.save_screenshot(str(tmp_path / "compare.png"))
        if os.environ.get("SMOOTHBLOCK_SCREENSHOT"):
            browser.save_screenshot(os.environ["SMOOTHBLOCK_SCREENSHOT"])
        text = page_text(f"{base}/runs/{parent}/artifacts", "plots")
        assert "plots" in text and "search.yaml" in text
        browser.find_element("xpath", "//*[normalize-space(text())='plots']").click()  # open the folder
        deadline = time.time() + 60
        while "tradeoff.png" not in (text := browser.find_element("tag name", "body").text) and time.time() < deadline:
            time.sleep(1)
        assert "tradeoff.png" in text and "optimization_history.png" in text
    finally:
        if browser is not None:
            browser.quit()
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=60)
    assert (tmp_path / "compare.png").stat().st_size > 20_000
