"""EOT-PGD as a trial runs it now (smoothblock.attacks.eot: one draw where nothing is random, the draws
batched with the deterministic prefix computed once) against torchattacks' EOTPGD (the loop every
trial ran before), on the robust base; with ``--attack apgd``, APGD-CE as the audit's AA-rand runs
it (smoothblock.attacks.apgd) against torchattacks' APGD (its highest-loss iterate, as the audit used it).

Protocol, in one run on a quiet machine: ``resnet20-cifar10-fgsm-at`` prepared as the trials'
models are (folded batch norms, channels_last), the first ``--images`` validation images (split
seed 0) in one batch, L-inf 8/255, alpha 2/255, ``--steps`` steps of ``--draws`` draws (the
search's EOT-PGD has 20 of 32); for each defense: the undefended base, SmoothBlock at position 1
and at position 5 (block 3, keep 0.7) with one pass, and at position 1 with a 4-pass self-ensemble.
Each arm: one warm-up, then ``--repeats`` timed runs, alternating the two arms; the median seconds,
and ``speedup`` = torchattacks / ours. Accuracy after each arm's last run, to show both attack alike.

Run: python benchmarks/bench_eot.py --data DIR [--attack eot_pgd|apgd] [--images 100] [--steps 5] [--draws 32]
         [--repeats 3] [--json OUT]   (AA-rand's APGD: --attack apgd --steps 10 --draws 20)
     python benchmarks/bench_eot.py --smoke --data DIR   (4 images, one step: it runs, no figures)
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torchattacks

import smoothblock
from smoothblock.attacks import predict
from smoothblock.data import load_splits, to_float
from smoothblock.attacks.apgd import apgd
from smoothblock.attacks.eot import eot_pgd

DEFENSES = {
    "none": {},
    "smoothblock p1 b3 k0.70 x1": dict(method="smoothblock", positions=[1], block_size=3, keep_prob=0.7),
    "smoothblock p5 b3 k0.70 x1": dict(method="smoothblock", positions=[5], block_size=3, keep_prob=0.7),
    "smoothblock p1 b3 k0.70 x4": dict(method="smoothblock", positions=[1], block_size=3, keep_prob=0.7, ensemble=4),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an ImageFolder copy of CIFAR-10 (train/, test/)")
    parser.add_argument("--model", default="resnet20-cifar10-fgsm-at")
    parser.add_argument("--attack", choices=("eot_pgd", "apgd"), default="eot_pgd")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="4 images, one step, one repeat: checks that it runs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.smoke:
        args.images, args.steps, args.draws, args.repeats = 4, 1, 2, 1
    val = load_splits(args.data, val_size=40 if args.smoke else 5000, split_seed=0, need_test=False).val
    images, labels = to_float(val.images[: args.images]), val.labels[: args.images]
    rows = []
    for name, fields in DEFENSES.items():
        model = smoothblock.load_model(args.model, **fields)
        arms = _arms(args, model, images, labels)
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        accuracy = {}
        for repeat in range(args.repeats + 1):  # the first round warms up
            for arm, run in arms.items():
                torch.manual_seed(repeat)
                started = time.perf_counter()
                adv = run()
                if repeat:
                    times[arm].append(time.perf_counter() - started)
                with torch.no_grad():
                    accuracy[arm] = float((predict(model, adv) == labels).float().mean())
        row = {"defense": name, **{f"{arm}_s": round(statistics.median(t), 3) for arm, t in times.items()},
               **{f"{arm}_acc": a for arm, a in accuracy.items()}}
        row["speedup"] = round(row["torchattacks_s"] / row["smoothblock_s"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "model": args.model, "attack": args.attack, "images": args.images, "steps": args.steps,
              "draws": args.draws, "repeats": args.repeats, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def _arms(args: argparse.Namespace, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """The two implementations of ``--attack``, each a function of nothing that returns the images."""
    if args.attack == "apgd":
        reference = torchattacks.APGD(model, eps=8 / 255, steps=args.steps, eot_iter=args.draws, loss="ce")
        return {"torchattacks": lambda: reference.perturb(images, labels, best_loss=True)[1],
                "smoothblock": lambda: apgd(model, images, labels, eps=8 / 255, steps=args.steps, draws=args.draws)}
    return {
        "torchattacks": lambda: torchattacks.EOTPGD(model, eps=8 / 255, alpha=2 / 255, steps=args.steps,
                                                    eot_iter=args.draws)(images, labels),
        "smoothblock": lambda: eot_pgd(model, images, labels, eps=8 / 255, alpha=2 / 255, steps=args.steps,
                                       draws=args.draws),
    }


if __name__ == "__main__":
    main()
