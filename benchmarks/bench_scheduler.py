"""Multi-fidelity post-hoc search: ASHA over chunks of images against running every trial to the end.

Protocol: two searches in one run, one after the other on a quiet machine, the same everything
(the ``posthoc`` preset: shipped model, 16 trials, seed 0, 500 validation images in chunks of 100,
the suite transfer + pgd + eot_pgd, two trials at a time on a local Ray), except ``scheduler``:
``asha`` (grace 1 chunk, reduction factor 3) or ``fifo``. The audit is off (``audit_top: 0``): it
costs the same for both and is not what is compared. Each search is timed from launch to its end
(Ray's start included); trials per hour = 16 / wall time. Best ``robust_acc`` = the best among
trials that saw all 500 images. Optuna is seeded, but with two trials at a time its proposals
depend on which trial finishes first, so the two searches need not try the same defenses.

Run: python benchmarks/bench_scheduler.py --data DIR [--trials N] [--json OUT]
     python benchmarks/bench_scheduler.py --smoke --data DIR   (2 trials on 8 images: it runs, no figures)
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from search.config import compose
from search.tuner import launch


def run(scheduler: str, data: str, trials: int, root: Path, smoke: bool = False) -> dict:
    sizes = {"val_images": 8, "chunk_images": 4, "audit_images": 8} if smoke else {}
    search = compose("posthoc", data=data, trials=trials, name=f"bench-{scheduler}", scheduler=scheduler,
                     audit_top=0, **sizes)
    if smoke:  # a folder smaller than the preset's validation split
        search = search.replace(base=search.base.replace(val_size=40))
    started = time.perf_counter()
    outcome = launch(search, mlflow_uri=f"sqlite:///{root / 'mlflow.db'}", storage=str(root / "ray_results"))
    seconds = time.perf_counter() - started
    done = [r for r in outcome.rows if r["status"] == "TERMINATED" and "robust_acc" in r]
    complete = [r for r in done if not r["stopped_early"]]
    best = max(complete, key=lambda r: (r["robust_acc"], r["clean_acc"]), default={})
    return {"scheduler": scheduler, "seconds": round(seconds, 1), "trials": len(done),
            "stopped_early": len(done) - len(complete), "trials_per_hour": round(3600 * len(done) / seconds, 1),
            "images_scored": int(sum(r["images"] for r in done)),
            "best_robust_acc": best.get("robust_acc"), "best_clean_acc": best.get("clean_acc"),
            "best": {k: best.get(k) for k in ("method", "positions", "block_size", "keep_prob", "ensemble")}}

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="2 trials on 8 images: checks that it runs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.smoke:
        args.trials = 2
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(s, args.data, args.trials, Path(tmp), args.smoke) for s in ("asha", "fifo")]
    report = {"machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
              "results": results, "speedup": round(results[1]["seconds"] / results[0]["seconds"], 2)}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
