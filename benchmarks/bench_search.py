"""What a search costs on top of its trials: N fixed post-hoc trials through the search against the
same evaluations in a bare loop, the trial workers' peak memory, and the start-up, cold and warm.

Protocol, in one run on a quiet machine:

1. Points: N distinct defenses drawn (seed 0) from the ``posthoc`` preset's space, pinned with
   ``points_to_evaluate`` so both arms score the same ones; the preset otherwise (shipped ResNet20,
   ``val_images`` 500 in chunks of 100, the suite transfer + pgd + eot_pgd), ``scheduler: fifo``
   (every trial scores every image, as the loop does), ``audit_top: 0`` (the audit is extra work
   the loop would not do), ``workers`` trials at a time with ``cpus_per_trial`` 1.
2. Search arm: ``search.tuner.launch`` on a local Ray, MLflow in a fresh sqlite store, timed from
   the call to its return (Ray's start, the undefended baseline, the plots included).
3. Loop arm (``benchmarks/bare_loop.py``): the same assets (``trainables.load_assets``), then the
   baseline and the N evaluations (``trainables.posthoc.score``) in a pool of ``workers``
   processes, one torch thread each: what the search runs, with nothing around it.
4. Both arms for N = 8 and N = 32, each arm once, loop first, both from the same filled cache
   (decoded images, transfer examples: loaded once, untimed, before them). ``overhead`` = search / loop;
   the line through the two N gives the start-up (intercept) and per-trial (slope) costs of each.
5. Memory: every 0.2 s, the resident memory of each trial worker (Ray's ``ray::`` worker
   processes; the pool's processes in the loop); the peak per arm.
6. Start-up: seconds from ``launch`` to the first trial's first result, with an empty data cache
   (``cold``: decoding the JPEG folder, crafting the transfer examples) and again with it filled
   (``warm``); ``ratio`` = warm / cold.
7. End to end (``--end_to_end N``): what a user waits for, process start to exit.
   ``smoothblock search --preset posthoc --config FILE`` (the N points pinned, as above) against
   ``python benchmarks/bare_loop.py --config FILE``, each arm in a folder of its own with an empty
   cache (cold), then again in the same folder, cache filled (warm: a second search beside the
   first one's MLflow store); loop cold, loop warm, search cold, search warm, ``--repeats`` times;
   the median of each and ``ratio`` = search / loop.

Run: python benchmarks/bench_search.py --data DIR [--trials 8 32] [--workers 2] [--no_startup] [--json OUT]
     python benchmarks/bench_search.py --data DIR --no_arms --end_to_end 8 [--repeats 3]   (end to end only)
     python benchmarks/bench_search.py --smoke --data DIR   (2 trials on 8 images: it runs, no figures)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from search.config import SearchConfig, compose  # first: it sets Ray's authentication mode
from search.tuner import launch
from trainables import load_assets

import bare_loop  # noqa: E402, I001 - beside this file
import mlflow  # noqa: E402, I001
from ray import tune  # noqa: E402, I001

MB = 2**20


def draw_points(n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct defenses in the posthoc preset's space (every method, position and ensemble)."""
    rng, points, seen = random.Random(seed), [], set()
    while len(points) < n:
        method = rng.choice(["smoothblock", "dropblock", "mixed"])
        point = {"method": method, "positions": [rng.randint(1, 5)], "block_size": rng.randint(1, 7),
                 "keep_prob": round(rng.uniform(0.5, 0.95), 2), "gamma": rng.choice(["calibrated", "thesis"]),
                 "ensemble": rng.randint(1, 4)}
        if method != "dropblock":
            point["mean"] = rng.choice(["sample", "channel"])
        if method == "mixed":
            point["smooth_prob"] = round(rng.uniform(0, 1), 2)
        key = json.dumps(point, sort_keys=True)
        if key not in seen:
            seen.add(key)
            points.append(point)
    return points


def configure(data: str, points: list[dict], images: int, workers: int, name: str, cache_dir: str,
              val_size: int | None = None, model: str | None = None) -> SearchConfig:
    search = compose("posthoc", data=data, model=model, trials=len(points), name=name, val_images=images,
                     audit_images=images,
                     chunk_images=min(100, images), scheduler="fifo", audit_top=0, max_concurrent_trials=workers)
    # val_size: the smoke test's folder is smaller than the preset's validation split.
    base = search.base.replace(cache_dir=cache_dir, val_size=val_size or search.base.val_size)
    return search.replace(base=base, points_to_evaluate=tuple(points))


class PeakMemory:
    """The largest peak resident set (Linux's VmHWM) of any process ``select(pid, cmdline)`` picks,
    read every ``every`` seconds from /proc (a process that exits keeps its last reading)."""

    def __init__(self, select, every: float = 0.2) -> None:
        self.select, self.every, self.peak = select, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                try:
                    if entry.name.isdigit() and self.select(int(entry.name), (entry / "cmdline").read_bytes()):
                        status = (entry / "status").read_text()
                        kib = int(status.split("VmHWM:")[1].split()[0])
                        self.peak = max(self.peak, kib * 1024)
                except (OSError, IndexError, ValueError):  # gone meanwhile, or a kernel thread
                    pass
            self._stop.wait(self.every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _ray_worker(pid: int, cmdline: bytes) -> bool:
    # Ray names its worker processes ray::<what runs>; its own services are raylet, gcs_server, ...
    return cmdline.startswith(b"ray::")


class FirstResult(tune.Callback):
    """When the first result of any trial reached the driver (time.perf_counter())."""

    def __init__(self) -> None:
        self.at: float | None = None

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.at = self.at or time.perf_counter()


def search_arm(search: SearchConfig, root: Path) -> dict:
    first = FirstResult()
    with PeakMemory(_ray_worker) as memory:
        started = time.perf_counter()
        outcome = launch(search, mlflow_uri=f"sqlite:///{root / (search.name + '.db')}",
                         storage=str(root / "ray_results"), callbacks=[first])
        seconds = time.perf_counter() - started
    done = [r for r in outcome.rows if r["status"] == "TERMINATED" and "robust_acc" in r]
    if len(done) != search.trials:
        raise SystemExit(f"bench_search: {search.trials - len(done)} of {search.trials} trials failed")
    return {"seconds": round(seconds, 2), "first_result_s": round(first.at - started, 2),
            "peak_worker_rss_mb": round(memory.peak / MB), "robust_acc": {bare_loop.key(r): r["robust_acc"] for r in done}}


def startup(search: SearchConfig, root: Path) -> dict:
    """Seconds to the first result with ``search``'s cache empty, then with it filled."""
    cold = search_arm(search, root)["first_result_s"]
    warm = search_arm(search.replace(name=search.name + "-again"), root)["first_result_s"]
    return {"cold_first_result_s": cold, "warm_first_result_s": warm, "ratio": round(warm / cold, 3)}


def loop_arm(search: SearchConfig) -> dict:
    children = set()
    with PeakMemory(lambda pid, cmdline: pid in children) as memory:
        started = time.perf_counter()
        results = bare_loop.run(search, on_start=children.update)
        seconds = time.perf_counter() - started
    results.pop("baseline")
    return {"seconds": round(seconds, 2), "peak_worker_rss_mb": round(memory.peak / MB),
            "robust_acc": {k: v["robust_acc"] for k, v in results.items()}}


def _timed(command: list[str], cwd: Path, cache: Path) -> float:
    """Seconds from ``command``'s start to its exit (it must succeed), run in ``cwd`` with ``cache``
    as the data cache."""
    env = os.environ | {"SMOOTHBLOCK_CACHE": str(cache)}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench_search: {' '.join(command[:4])} ... exited {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds


def _finished_trials(db: Path, name: str) -> int:
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], "tags.mlflow.parentRunId != ''") if experiment else []
    return sum(r.info.status == "FINISHED" and "robust_acc" in r.data.metrics for r in runs)


def end_to_end(data: str, points: list[dict], images: int, workers: int, root: Path, repeats: int,
               val_size: int | None = None, warm: bool = True, model: str | None = None) -> dict:
    """Process start to exit, as a user waits for it: ``smoothblock search --preset posthoc --config
    FILE`` against ``benchmarks/bare_loop.py`` on the same FILE, each in its own folder, first with
    an empty data cache (cold), then again in the same folder with it filled (warm: a user's second
    search, beside the first one's MLflow store). Arms alternate, ``repeats`` times; medians."""
    config = root / "end-to-end.yaml"
    config.write_text(yaml.safe_dump({
        "trials": len(points), "points_to_evaluate": points, "val_images": images, "audit_images": images,
        "chunk_images": min(100, images), "scheduler": "fifo", "audit_top": 0, "max_concurrent_trials": workers,
        **({"base": {"val_size": val_size}} if val_size else {}), **({"model": model} if model else {})}))
    common = ["--preset", "posthoc", "--config", str(config), "--data", str(Path(data).resolve())]
    seconds: dict[str, dict[str, list[float]]] = {arm: {"cold": [], "warm": []} for arm in ("loop", "search")}
    for repeat in range(repeats):
        for arm in ("loop", "search"):
            folder, cache = root / f"{arm}-{repeat}", root / f"cache-{arm}-{repeat}"
            folder.mkdir()
            for state in ("cold", "warm") if warm else ("cold",):
                name = f"e2e-{state}"
                command = ([sys.executable, str(Path(__file__).with_name("bare_loop.py")), *common] if arm == "loop" else
                           [sys.executable, "-m", "search.cli", "search", *common, "--name", name])
                seconds[arm][state].append(round(_timed(command, folder, cache), 2))
                if arm == "search" and _finished_trials(folder / "mlflow.db", name) != len(points):
                    raise SystemExit(f"bench_search: the {state} search did not finish its {len(points)} trials")
            print(json.dumps({"repeat": repeat, **{a: {k: v[-1] for k, v in s.items() if v} for a, s in seconds.items()}}),
                  flush=True)
    report = {"trials": len(points), "repeats": repeats, "seconds": seconds}
    for state in ("cold", "warm") if warm else ("cold",):
        loop, searched = (statistics.median(seconds[arm][state]) for arm in ("loop", "search"))
        report[state] = {"loop_s": loop, "search_s": searched, "ratio": round(searched / loop, 3)}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an ImageFolder copy of CIFAR-10 (train/, test/)")
    parser.add_argument("--trials", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--images", type=int, default=500, help="validation images per trial")
    parser.add_argument("--workers", type=int, default=2, help="trials at a time, in both arms")
    parser.add_argument("--model", default=None, help="the trained model (default: the posthoc preset's)")
    parser.add_argument("--no_startup", action="store_true", help="skip the cold and warm start-up measurement")
    parser.add_argument("--end_to_end", type=int, default=0, metavar="TRIALS",
                        help="also time TRIALS trials from process start to exit, cold and warm, against the bare loop")
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end runs of each arm and state (median)")
    parser.add_argument("--no_arms", action="store_true", help="only the end-to-end measurement")
    parser.add_argument("--smoke", action="store_true", help="2 trials on 8 images: checks that it runs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    val_size = None
    if args.smoke:
        args.trials, args.images, val_size = [2], 8, 40
        args.end_to_end, args.repeats = (2 if args.end_to_end else 0), 1
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d"), "images": args.images, "workers": args.workers, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp), str(Path(tmp) / "cache")
        for n in [] if args.no_arms else args.trials:
            search = configure(args.data, draw_points(n), args.images, args.workers, f"bench-{n}", cache, val_size,
                               args.model)
            # Both arms start from the same filled cache (decoded images, transfer examples): the
            # cold start is measured on its own below.
            load_assets("posthoc", search.base, search.model, search.audit_images, search.attacks,
                        search.attack_settings(), search.search_seed)
            loop = loop_arm(search)
            searched = search_arm(search, root)
            report["runs"].append({"trials": n, "loop": loop, "search": searched,
                                   "overhead": round(searched["seconds"] / loop["seconds"], 3)})
            print(json.dumps(report["runs"][-1] | {"loop": loop["seconds"], "search": searched["seconds"]}), flush=True)
        if args.end_to_end:
            # Its own folders and caches, after the arms: the first run is cold.
            report["end_to_end"] = end_to_end(args.data, draw_points(args.end_to_end), args.images, args.workers,
                                              root, args.repeats, val_size, warm=not args.smoke, model=args.model)
        if not args.no_startup and not args.no_arms:
            report["startup"] = startup(configure(args.data, draw_points(1), args.images, args.workers, "bench-cold",
                                                  cache + "-cold", val_size, args.model), root)
    if len(report["runs"]) >= 2:
        (a, b) = report["runs"][0], report["runs"][-1]
        for arm in ("loop", "search"):
            slope = (b[arm]["seconds"] - a[arm]["seconds"]) / (b["trials"] - a["trials"])
            report[f"{arm}_per_trial_s"] = round(slope, 2)
            report[f"{arm}_fixed_s"] = round(a[arm]["seconds"] - slope * a["trials"], 2)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
