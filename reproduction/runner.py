"""Run the plan's cells: find (or train) each model, evaluate each cell once, keep every result.

Each finished cell is one JSON file under ``<work_dir>/<budget>/cells/``, written atomically and
keyed by what it measured (model file's SHA-256, test-time defense, suite, attack settings, images),
so a second run skips finished cells and a crashed run resumes at the cell it was in. A model that
changed (another SHA-256) or a budget that changed gives new keys, never stale numbers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchattacks

from smoothblock.checkpoint import atomic_write, load_checkpoint
from smoothblock.config import Config
from smoothblock.data import TensorDataset
from smoothblock.errors import ConfigError
from smoothblock.evaluation import evaluate
from smoothblock.hub import WEIGHTS_DIR, apply_overrides, model_from_state
from .plan import Budget, Row, cell_batch_size, cell_settings, suite_attacks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFile:
    """A model the experiments need: where its weights are and how they were found."""

    name: str
    path: Path
    origin: str  # "shipped", "model_dir" or "trained here"
    sha256: str


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe_path(name: str) -> Path:
    """The shipped training recipe of a named model (``smoothblock/weights/<name>.yaml``)."""
    return WEIGHTS_DIR / f"{name}.yaml"


def find_model(name: str, *, work_dir: Path, model_dir: Path | None = None) -> ModelFile | None:
    """``name`` from ``model_dir`` (``<name>.safetensors``), the shipped weights, or this budget's
    own training (``<work_dir>/models/<name>/model.safetensors``, ``work_dir`` being the budget's
    folder: a smoke run's one-epoch models never stand in for a real run's), in that order; None
    when none of them has it."""
    candidates = [(WEIGHTS_DIR / f"{name}.safetensors", "shipped"),
                  (work_dir / "models" / name / "model.safetensors", "trained here")]
    if model_dir is not None:
        candidates.insert(0, (model_dir / f"{name}.safetensors", "model_dir"))
    for path, origin in candidates:
        if path.is_file():
            return ModelFile(name, path, origin, sha256(path))
    return None


def train_model(name: str, *, data: str, work_dir: Path, budget: Budget, device: str,
                cache_dir: str | None, progress: bool) -> ModelFile:
    """Train ``name`` from its shipped recipe (resuming a run this work folder started), with the
    budget's overrides (the smoke budget's one short epoch), on ``data``'s training split."""
    from smoothblock.train import train

    recipe = recipe_path(name)
    if not recipe.is_file():
        raise ConfigError(f"model {name} is neither shipped nor found, and has no recipe to train it with")
    out_dir = work_dir / "models" / name
    cfg = Config.load(recipe).replace(data=data, out_dir=str(out_dir), device=device, cache_dir=cache_dir,
                                      **(budget.train or {}))
    log.info("training %s (%s epochs) into %s", name, cfg.epochs, out_dir)
    train(cfg, resume=(out_dir / "last.pt").is_file(), progress=progress)
    path = out_dir / "model.safetensors"
    return ModelFile(name, path, "trained here", sha256(path))


#: Bump when a change to the attacks or to evaluate() makes earlier cells wrong.
CELL_FORMAT = 5


def cell_key(model: ModelFile, row: Row, suite: str, budget: Budget, seed: int, data: str) -> str:
    """What identifies a cell's measurement (not its place in the report): the weights, the images,
    the defense, the attacks and their settings, the seed and the versions that run them."""
    attacks, cascade = suite_attacks(budget, row, suite)
    content = {"format": CELL_FORMAT, "model": model.sha256, "data": data,
               "defense": [[k, list(v) if isinstance(v, tuple) else v] for k, v in row.defense],
               "suite": suite, "attacks": attacks, "cascade": cascade, "images": budget.images, "seed": seed,
               "settings": cell_settings(budget, row).to_dict(), "torch": torch.__version__,
               "torchattacks": torchattacks.__version__, "batch_size": cell_batch_size(row)}  # it changes the draws
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:20]


def build_row_model(model: ModelFile, row: Row, device: str | torch.device) -> torch.nn.Module:
    """The whole defended model of ``row`` (ensemble included), in eval mode."""
    saved, state_dict = load_checkpoint(model.path)
    cfg = apply_overrides(saved, model.path, **row.overrides)
    return model_from_state(cfg, state_dict, device=device, source=model.path)


def run_cell(model: ModelFile, row: Row, suite: str, *, budget: Budget, dataset: TensorDataset, data_key: str,
             cells_dir: Path, device: str | torch.device, seed: int, progress: bool) -> dict[str, Any]:
    """The record of one cell: read from ``cells_dir`` when measured before, else measured and saved.
    ``data_key``: :func:`smoothblock.data.fingerprint` of the images scored."""
    key = cell_key(model, row, suite, budget, seed, data_key)
    path = cells_dir / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    attacks, cascade = suite_attacks(budget, row, suite)
    settings, batch = cell_settings(budget, row), cell_batch_size(row)
    network = build_row_model(model, row, device)
    started = time.perf_counter()
    torch.set_grad_enabled(True)
    metrics = evaluate(network, dataset, attacks=attacks, images=budget.images, cascade=cascade, settings=settings,
                       batch_size=batch, seed=seed, device=device,
                       num_classes=network.smoothblock_config.num_classes, progress=progress)
    record = {"key": key, "model": model.name, "model_sha256": model.sha256, "origin": model.origin,
              "label": row.label, "defense": dict(row.defense), "suite": suite, "attacks": list(attacks),
              "cascade": cascade, "settings": settings.to_dict(), "batch_size": batch, "seed": seed,
              "seconds": round(time.perf_counter() - started, 1), "metrics": metrics}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1, default=list) + "\n",
                                                        encoding="utf-8"))
    shown = ("clean_acc", "fgsm_8_acc", "worst_fgsm_8_acc", "pgd_acc", "robust_acc", "cw_acc")
    log.info("%s [%s] %s: %s (%.0f s)", row.label, model.name, suite,
             " ".join(f"{k}={metrics[k]:.3f}" for k in shown if k in metrics), record["seconds"])
    return record
