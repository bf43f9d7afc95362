"""Training-step speed of ResNet20 under bfloat16 autocast against float32, in the same run.

Protocol: ResNet20 (no defense), train mode, channels_last, SGD with Nesterov momentum, random
images in [0, 1] and random labels; one step = forward, cross-entropy, backward, optimizer step.
Each mode is warmed up, then the modes alternate within each repeat so drift hits both; the median
step time is reported as images a second, and the ratio is median(float32) / median(bfloat16), the
speed-up that ``bf16: true`` (or its automatic choice, ``smoothblock.device.use_bf16``) buys.

Run: python benchmarks/bench_training.py [--batch_size 256] [--repeats 10] [--json OUT]
"""
from __future__ import annotations

import argparse
import platform
import statistics

import torch
import torch.nn.functional as F

from smoothblock import Config, build_model
from smoothblock.device import use_bf16

from bench_inference import _time, emit


def step_fn(bf16: bool, batch_size: int):
    torch.manual_seed(0)
    model = build_model(Config(method="none")).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    x = torch.rand(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    steps = {"float32": step_fn(False, args.batch_size), "bfloat16": step_fn(True, args.batch_size)}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(_time(step))
    medians = {name: statistics.median(t) for name, t in times.items()}
    flags = open("/proc/cpuinfo", encoding="utf-8").read() if platform.system() == "Linux" else ""
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                   f"amx_bf16={'amx_bf16' in flags}, avx512_bf16={'avx512_bf16' in flags}",
        "torch": torch.__version__, "batch_size": args.batch_size, "warmup": args.warmup, "repeats": args.repeats,
        "auto_bf16": use_bf16(Config(), torch.device("cpu")),
        "results": {name: {"step_s": m, "images_per_s": args.batch_size / m} for name, m in medians.items()},
        "speedup_bf16": medians["float32"] / medians["bfloat16"],
    }
    emit(report, args.json)


if __name__ == "__main__":
    main()
