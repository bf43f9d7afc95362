"""Every benchmark runs in its smoke mode (a few images, one repeat): it executes and prints its
JSON. Their figures are measured on a quiet machine and written in BENCHMARKS.md, never here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=900, env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    # The last JSON object printed is the report.
    start = out.stdout.rindex("\n{\n") + 1 if "\n{\n" in out.stdout else out.stdout.index("{")
    return json.loads(out.stdout[start:])


@pytest.mark.parametrize("script,args,key", [
    ("bench_inference.py", ("--batch_size", "8", "--repeats", "1", "--ensemble_repeats", "1"), "smoothblock_pos1_vs_plain"),
    ("bench_training.py", ("--batch_size", "8", "--warmup", "1", "--repeats", "1"), "speedup_bf16"),
    ("bench_epoch.py", ("--smoke", "--device", "cpu"), "results"),
    ("bench_driver.py", ("--smoke",), "mlflow_server_s_per_trial"),
])
def test_a_benchmark_without_ray_runs(script, args, key):
    report = run_benchmark(script, *args)
    assert key in report or key in report.get("results", {})


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("bench-data"), per_class=(6, 1))


def test_the_search_benchmark_runs(small_folder, ray_home, tmp_path):
    report = run_benchmark("bench_search.py", "--smoke", "--end_to_end", "2", "--data", str(small_folder),
                           env={"SMOOTHBLOCK_CACHE": str(tmp_path)})
    run = report["runs"][0]
    # Both arms scored the same pinned defenses, seeded alike: the same figures.
    assert run["trials"] == 2 and run["loop"]["robust_acc"] == run["search"]["robust_acc"]
    assert run["search"]["peak_worker_rss_mb"] > 0 and report["startup"]["cold_first_result_s"] > 0
    # End to end: both processes ran to a clean exit (the search with every trial finished).
    assert report["end_to_end"]["cold"]["ratio"] > 0


def test_the_scheduler_benchmark_runs(small_folder, ray_home, tmp_path):
    report = run_benchmark("bench_scheduler.py", "--smoke", "--data", str(small_folder),
                           env={"SMOOTHBLOCK_CACHE": str(tmp_path)})
    assert [r["scheduler"] for r in report["results"]] == ["asha", "fifo"]


@pytest.mark.parametrize("attack", ["eot_pgd", "apgd"])
def test_the_eot_benchmark_runs(small_folder, tmp_path, attack):
    report = run_benchmark("bench_eot.py", "--smoke", "--attack", attack, "--data", str(small_folder),
                           env={"SMOOTHBLOCK_CACHE": str(tmp_path)})
    assert report["attack"] == attack and [r["defense"] for r in report["rows"]][0] == "none"
    assert all(r["speedup"] > 0 for r in report["rows"])


def test_the_bf16_attack_benchmark_runs(small_folder, tmp_path):
    report = run_benchmark("bench_attack_bf16.py", "--smoke", "--data", str(small_folder),
                           env={"SMOOTHBLOCK_CACHE": str(tmp_path)})
    assert {r["mode"] for r in report["rows"]} == {"float32", "bf16"} and report["images"] == 8


def test_the_gpu_check_runs_its_cpu_fallback_and_writes_one_json(small_folder, ray_home, tmp_path):
    # The script a GPU session runs unchanged; without a GPU it takes the same steps, tiny. It
    # starts a real search (Ray), so it is in the full lane.
    out = tmp_path / "gpu-check.json"
    env = {**os.environ, "SMOOTHBLOCK_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(small_folder), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and "pass" not in report  # a CPU run is a check of the script, not a figure
    assert report["posthoc"]["trials"] == 2 and report["posthoc"]["trials_per_hour"] > 0
    assert {"train_batch_128", "train_batch_1024"} <= set(report)
