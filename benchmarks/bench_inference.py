"""Inference cost of SmoothBlock and of the self-ensemble, against baselines in the same run.

Protocol: ResNet20, eval mode, no_grad, float32, batch 256 of random images in [0, 1]. Every
measurement is warmed up, then repeated; candidate and baseline alternate within each repeat so
drift hits both; the median is reported and the ratio is median(candidate) / median(baseline).

1. SmoothBlock at position 1 vs the undefended ResNet20 (target: at most 1.05).
2. A 32-pass self-ensemble with SmoothBlock at position 4 (deterministic prefix run once) vs 32
   full forward passes of the same defended model (target: at most 1/3).

Run: python benchmarks/bench_inference.py [--repeats N] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from smoothblock import Config, SelfEnsemble, build_model


def _time(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def compare(candidate, baseline, warmup: int, repeats: int) -> dict[str, float]:
    for _ in range(warmup):
        candidate(), baseline()
    cand, base = [], []
    for _ in range(repeats):
        cand.append(_time(candidate))
        base.append(_time(baseline))
    c, b = statistics.median(cand), statistics.median(base)
    return {"candidate_s": c, "baseline_s": b, "ratio": c / b}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--ensemble_repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 3, 32, 32)
    plain = build_model(Config(method="none")).eval()
    pos1 = build_model(Config(positions=(1,), block_size=3, keep_prob=0.7)).eval()
    pos4 = build_model(Config(positions=(4,), block_size=3, keep_prob=0.7)).eval()
    pos1.load_state_dict(plain.state_dict())
    pos4.load_state_dict(plain.state_dict())
    ensemble = SelfEnsemble(pos4, 32)
    results = {}
    with torch.no_grad():
        results["smoothblock_pos1_vs_plain"] = compare(lambda: pos1(x), lambda: plain(x), 3, args.repeats)
        results["ensemble32_pos4_vs_32_passes"] = compare(
            lambda: ensemble(x), lambda: [pos4(x) for _ in range(32)], 1, args.ensemble_repeats)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "batch_size": args.batch_size, "repeats": args.repeats,
        "ensemble_repeats": args.ensemble_repeats, "results": results,
    }
    emit(report, args.json)


def emit(report: dict, path: str | None) -> None:
    """Print the report as JSON and, with ``--json PATH``, write it there too."""
    print(json.dumps(report, indent=2))
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
