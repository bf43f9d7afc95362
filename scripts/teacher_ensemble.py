"""Clean accuracy of models and of their averaged probabilities, to choose distillation teachers.

    python scripts/teacher_ensemble.py results/resnet20-cifar10/teachers/*.safetensors

Scores on the validation split (the search's, never the test set) by default, so choosing
teachers never looks at the test images. Prints one line per model and per combination.
"""
from __future__ import annotations

import argparse
import itertools
import sys

import torch

import smoothblock
from smoothblock.data import iterate_batches, load_splits
from smoothblock.errors import SmoothBlockError


@torch.no_grad()
def probabilities(model: torch.nn.Module, dataset, batch_size: int = 500) -> torch.Tensor:
    """Softmax outputs (N, K) of ``model`` on a TensorDataset, in order."""
    return torch.cat([model(images).float().softmax(1) for images, _ in iterate_batches(dataset, batch_size)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="shipped names or checkpoint files")
    parser.add_argument("--data", default="../shared/datasets/cifar10-jpg")
    parser.add_argument("--val_size", type=int, default=5000)
    parser.add_argument("--split_seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        models = {name: smoothblock.load_model(name) for name in args.models}  # before the data: fail fast
        splits = load_splits(args.data, val_size=args.val_size, split_seed=args.split_seed, need_test=False)
        probs = {name: probabilities(model, splits.val) for name, model in models.items()}
    except SmoothBlockError as exc:
        print(f"teacher_ensemble: {exc}", file=sys.stderr)
        return 2
    labels = splits.val.labels
    for size in range(1, len(probs) + 1):
        for names in itertools.combinations(probs, size):
            acc = (sum(probs[n] for n in names).argmax(1) == labels).float().mean().item()
            print(f"{100 * acc:.2f}%  {' + '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
