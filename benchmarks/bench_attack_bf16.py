"""Attacks under bfloat16 autocast (``attack_bf16``) against float32: the accuracy they leave and their time.

A bf16 attack that left more accuracy than the float32 one would make a defense look robust
because of the number format; this measures whether it does, where the accuracy is far from 0
(small eps), so that a difference can show.

Protocol: the shipped ResNet20, undefended and with SmoothBlock (position 1, block size 3, keep
prob 0.7), the first ``--images`` validation images (split seed 0), PGD-7 at eps 1/255 and 2/255
(step eps / 4), seed 0, batches of 200; each setting once in float32 and once under
:class:`smoothblock.defended.Autocast`; seconds per run (one run each, not a median).

Run: python benchmarks/bench_attack_bf16.py --data DIR [--images 500] [--json OUT]
     python benchmarks/bench_attack_bf16.py --smoke --data DIR   (8 images: it runs, no figures)
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import smoothblock
from smoothblock.attacks import AttackSettings
from smoothblock.data import load_splits
from smoothblock.defended import Autocast
from smoothblock.evaluation import evaluate

DEFENSES = {"none": {}, "smoothblock p1 b3 k0.70": dict(method="smoothblock", positions=[1], block_size=3, keep_prob=0.7)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an ImageFolder copy of CIFAR-10 (train/, test/)")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--smoke", action="store_true", help="8 images: checks that it runs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    val_size = 40 if args.smoke else 5000
    images = 8 if args.smoke else args.images
    val = load_splits(args.data, val_size=val_size, split_seed=0, need_test=False).val.take(torch.arange(images))
    rows = []
    for eps in (1, 2):
        settings = AttackSettings(eps=eps, pgd_alpha=eps / 255 / 4)
        for name, fields in DEFENSES.items():
            model = smoothblock.load_model("resnet20-cifar10", **fields)
            for mode, attacked in (("float32", model), ("bf16", Autocast(model, "cpu"))):
                started = time.perf_counter()
                metrics = evaluate(attacked, val, attacks=("pgd",), settings=settings, seed=0, progress=False,
                                   batch_size=200)
                rows.append({"eps": f"{eps}/255", "defense": name, "mode": mode, "clean_acc": metrics["clean_acc"],
                             "pgd_acc": metrics["pgd_acc"], "seconds": round(time.perf_counter() - started, 2)})
                print(json.dumps(rows[-1]), flush=True)
    report = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "images": images, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
