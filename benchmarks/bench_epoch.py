"""Epoch time of ResNet20 training through ``smoothblock.train.train_one_epoch``, eager against
``compile: true`` (torch.compile), in the same run.

Protocol: ResNet20 (no defense) and the Cutout recipe of examples/resnet20-cifar10-cutout.yaml
(fast, batch 128, lr 0.1, Cutout 16, bf16 where ``use_bf16`` picks it), 45,000 random 32x32 uint8 images with random labels, held where
``train`` holds them (on the GPU for a GPU). One epoch = shuffling, augmentation, forward, loss,
backward and optimizer steps, the whole real pipeline. Each mode is warmed up by one epoch (the
compiled mode compiles in it), then the modes alternate epoch by epoch within each repeat so drift
hits both; medians; ratio = median(eager) / median(compile).

Run: python benchmarks/bench_epoch.py [--device cuda] [--images 45000] [--batch_size 128] [--repeats 3] [--json OUT]
     python benchmarks/bench_epoch.py --smoke   (256 images, eager only: it runs, no figures)
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from smoothblock import Config, build_model
from smoothblock.data import Splits, TensorDataset
from smoothblock.recipes import resolve_recipe
from smoothblock.device import resolve_device, use_bf16
from smoothblock.train import train_one_epoch

from bench_inference import emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=45000)
    parser.add_argument("--batch_size", type=int, default=128, help="the recipe's is 128")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=("eager", "compile"), default=["eager", "compile"])
    parser.add_argument("--smoke", action="store_true", help="256 images, eager, one repeat: checks that it runs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.smoke:  # torch.compile alone takes minutes on a CPU
        args.images, args.repeats, args.modes = 256, 1, ["eager"]
    device = resolve_device(args.device)
    cfg = Config(method="none", recipe="fast", batch_size=args.batch_size, lr=0.1, cutout=16, epochs=100, device=args.device)
    recipe, bf16 = resolve_recipe(cfg), use_bf16(cfg, device)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g),
                         torch.randint(0, 10, (args.images,), generator=g)).to(device)
    splits = Splits(data, data.take(slice(0, 0)), data.take(slice(0, 0)), tuple(map(str, range(10))))
    runs = {}
    for mode in args.modes:
        torch.manual_seed(0)
        model = build_model(cfg).to(device).to(memory_format=torch.channels_last)
        stepped = torch.compile(model) if mode == "compile" else model
        runs[mode] = (stepped, recipe.optimizer(model))

    def epoch(mode: str, index: int) -> float:
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        started = time.perf_counter()
        train_one_epoch(*runs[mode], splits, cfg, recipe, index, device, progress=False, bf16=bf16)
        sync()
        return time.perf_counter() - started

    warmup = {mode: epoch(mode, 0) for mode in runs}
    times = {mode: [] for mode in runs}
    for r in range(args.repeats):
        for mode in runs:
            times[mode].append(epoch(mode, 1 + r))
    medians = {mode: statistics.median(t) for mode, t in times.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    emit({
        "machine": f"{name}, {torch.get_num_threads()} CPU threads", "torch": torch.__version__,
        "device": str(device), "bf16": bf16, "images": args.images, "batch_size": recipe.batch_size,
        "repeats": args.repeats, "warmup_epoch_s": warmup, "epoch_s": times,
        "results": {m: {"epoch_s": s, "images_per_s": args.images / s} for m, s in medians.items()},
        "speedup_compile": medians["eager"] / medians["compile"] if len(medians) == 2 else None,
    }, args.json)


if __name__ == "__main__":
    main()
