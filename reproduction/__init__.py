"""``smoothblock reproduce``: the thesis' experiments against an adaptive attacker, in one report.

:func:`reproduce` finds (or trains) the models, measures every cell of the chosen experiments once
(see :mod:`.plan` for what a cell is and :mod:`.runner` for how results are kept), draws the figures
and writes the Markdown report with its PNG figures beside it.
"""
from __future__ import annotations

import datetime
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from smoothblock.checkpoint import load_checkpoint, read_provenance
from smoothblock.data import fingerprint, load_dataset
from smoothblock.errors import ConfigError
from smoothblock.device import resolve_device
from smoothblock.version import commit
from . import figures
from . import plan as _plan
from .plan import _SB, BASE, BUDGETS, EXPERIMENT_IDS, SMOOTHBLOCK, Budget, Row
from .report import ADAPTIVE_NOTE, experiment_section, header, merged, summary
from .runner import ModelFile, build_row_model, find_model, run_cell, train_model
from .thesis import THESIS

__all__ = ["BUDGETS", "EXPERIMENT_IDS", "reproduce"]

log = logging.getLogger(__name__)


def machine() -> str:
    """The CPU (or GPU), threads and torch version, for the report's header."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    n = torch.get_num_threads()
    return f"{cpu} ({n} thread{'s' if n != 1 else ''}{gpu}), torch {torch.__version__}"


def describe(model: ModelFile) -> dict[str, str]:
    """A model's row in the report's model table."""
    cfg, _ = load_checkpoint(model.path)
    record = read_provenance(model.path) if model.path.suffix == ".safetensors" else {}
    parts = [f"{cfg.method}" + (f" ({cfg.defense_at})" if cfg.method != "none" else "")]
    if record.get("adv_training", "none") != "none":
        parts.append(f"adversarial: {record['adv_training']}")
    if record.get("epochs"):
        n = record["epochs"]
        parts.append(f"{n} epoch{'s' if n != 1 else ''} of the {record.get('recipe')} recipe")
    elif record.get("recipe"):
        parts.append(str(record["recipe"]).split(",")[0])
    return {"name": model.name, "origin": model.origin, "training": "; ".join(parts), "sha256": model.sha256}


def reproduce(*, experiments: tuple[str, ...] = EXPERIMENT_IDS, budget: str = "cpu", data: str = "cifar10",
              out: str | Path = "docs/reproduction.md", work_dir: str | Path = "runs/reproduce",
              model_dir: str | Path | None = None, device: str = "auto", cache_dir: str | None = None,
              seed: int = 0, progress: bool = True) -> Path:
    """Run the experiments and write the report.

    Args:
        experiments: thesis experiment numbers, from :data:`EXPERIMENT_IDS`.
        budget: ``smoke`` (a few images, tiny training: a test of the pipeline), ``cpu`` or ``full``.
        data: ``cifar10`` or a CIFAR-10 ImageFolder folder; cells use its test split, training its
            training split less the validation images.
        out: the Markdown report; its figures go to ``<out's folder>/<out's stem>/``.
        work_dir: where cells and models trained here are kept, per budget
            (``<work_dir>/<budget>/cells``, ``<work_dir>/<budget>/models``).
        model_dir: a folder of ``<name>.safetensors`` to use before the shipped weights.

    Returns:
        The report's path.
    """
    _check(budget, experiments, out, work_dir, model_dir)
    spec: Budget = BUDGETS[budget]
    command = command_line(experiments, budget, data, out, work_dir, model_dir, seed)
    out, work_dir = Path(out), Path(work_dir)
    model_dir = Path(model_dir) if model_dir is not None else None
    dev = resolve_device(device)
    budget_dir = work_dir / budget
    started = time.perf_counter()
    plan = {k: v for k, v in _plan.experiments(spec).items() if k in experiments}
    needed = list(dict.fromkeys([r.model for e in plan.values() for r in e.rows]
                                + ([BASE, SMOOTHBLOCK] if "4.6" in experiments else [])))
    models = {name: _model(name, data, budget_dir, model_dir, spec, dev, cache_dir, progress) for name in needed}
    dataset, classes = load_dataset(data, "test", cache_dir)
    cells = _Cells(models, dataset, spec, budget_dir / "cells", dev, seed, progress)
    figure_dir = out.parent / out.stem
    rel = f"{out.stem}"
    sections, texts = {}, {}
    for exp_id in EXPERIMENT_IDS:
        if exp_id not in experiments:
            continue
        exp_started = time.perf_counter()
        if exp_id == "4.6":
            texts[exp_id] = _cams(models, dataset, classes, spec, figure_dir, rel, dev, seed)
            continue
        experiment = plan[exp_id]
        rows, seconds = cells.measure(experiment)
        sections[exp_id] = rows
        texts[exp_id] = experiment_section(experiment, rows, _figures(exp_id, rows, spec, figure_dir, rel),
                                           time.perf_counter() - exp_started, seconds)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = header(command, machine(), spec, date, commit(), time.perf_counter() - started,
                   math.fsum(cells.measured.values()), [describe(m) for m in models.values()])
    lines += ["What the thesis claims, what its own attacks measure here, and what an adaptive attacker leaves "
              "(percent):", ""] + summary(sections) + ["", ADAPTIVE_NOTE, ""]
    text = "\n".join(lines) + "\n\n" + "\n".join(texts[k] for k in EXPERIMENT_IDS if k in texts)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    log.info("wrote %s (%.0f s)", out, time.perf_counter() - started)
    return out


def _check(budget: str, experiments: tuple[str, ...], out, work_dir, model_dir) -> None:
    """One ConfigError line for the first bad argument, before anything is measured or written."""
    if budget not in BUDGETS:
        raise ConfigError(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    unknown = [e for e in experiments if e not in EXPERIMENT_IDS]
    if unknown:
        raise ConfigError(f"unknown experiment {unknown[0]!r}; choose from {' '.join(EXPERIMENT_IDS)}")
    if model_dir is not None and not Path(model_dir).is_dir():
        raise ConfigError(f"model_dir {model_dir} is not a folder")
    if Path(out).is_dir() or Path(out).suffix != ".md":
        raise ConfigError(f"out must be a Markdown file (.md), got {out}")
    if Path(work_dir).exists() and not Path(work_dir).is_dir():
        raise ConfigError(f"work_dir {work_dir} is not a folder")


def _model(name: str, data: str, budget_dir: Path, model_dir: Path | None, spec: Budget, dev, cache_dir,
           progress: bool) -> ModelFile:
    """The weights of ``name``: found (this work folder, ``model_dir``, shipped), else trained here."""
    found = find_model(name, work_dir=budget_dir, model_dir=model_dir)
    if found is None:
        found = train_model(name, data=data, work_dir=budget_dir, budget=spec, device=str(dev),
                            cache_dir=cache_dir, progress=progress)
    log.info("model %s: %s (%s)", name, found.path, found.origin)
    return found


class _Cells:
    """The cells of a report: each measured once (or read back), with the seconds it took."""

    def __init__(self, models: dict[str, ModelFile], dataset, spec: Budget, cells_dir: Path, device, seed: int,
                 progress: bool) -> None:
        self.models, self.dataset, self.spec, self.cells_dir = models, dataset, spec, cells_dir
        self.device, self.seed, self.progress = device, seed, progress
        self.data_key = fingerprint(dataset.take(slice(0, spec.images)))
        self.measured: dict[str, float] = {}  # cell key -> its measuring seconds: a cell two tables share counts once

    def measure(self, experiment) -> tuple[dict[str, Any], float]:
        """The experiment's rows (label -> merged metrics) and the seconds its cells took."""
        rows, cells = {}, {}
        for row in experiment.rows:
            records = {suite: run_cell(self.models[row.model], row, suite, budget=self.spec, dataset=self.dataset,
                                       data_key=self.data_key, cells_dir=self.cells_dir, device=self.device,
                                       seed=self.seed, progress=self.progress)
                       for suite in row.suites}
            rows[row.label] = merged(records)
            cells.update({r["key"]: r["seconds"] for r in records.values()})
        self.measured.update(cells)
        return rows, math.fsum(cells.values())


def command_line(experiments: tuple[str, ...], budget: str, data: str, out, work_dir, model_dir, seed: int) -> str:
    """The ``smoothblock reproduce`` command that makes this report (for its header)."""
    parts = ["smoothblock reproduce"]
    if tuple(experiments) != EXPERIMENT_IDS:
        parts.append("--experiments " + " ".join(experiments))
    parts.append(f"--budget {budget} --data {data}")
    for flag, value, default in (("out", out, "docs/reproduction.md"), ("work_dir", work_dir, "runs/reproduce"),
                                 ("model_dir", model_dir, None), ("seed", seed, 0)):
        if value is not None and str(value) != str(default):
            parts.append(f"--{flag} {value}")
    return " ".join(parts)


def _figures(exp_id: str, rows: dict, spec: Budget, figure_dir: Path, rel: str) -> list[str]:
    present = {k: v for k, v in rows.items() if v is not None}
    if not present:
        return []
    if exp_id == "4.3":
        figures.by_position(present, spec.positions, figure_dir / "positions.png")
        return [f"{rel}/positions.png"]
    paths = []
    if exp_id in ("4.4", "4.5", "4.7", "4.8") and all("fgsm_8_acc" in m for m in present.values()):
        name = f"fgsm-{exp_id.replace('.', '-')}.png"
        figures.fgsm_curves(f"Accuracy against FGSM eps (thesis Figure {exp_id})", present, THESIS[exp_id],
                            figure_dir / name)
        paths.append(f"{rel}/{name}")
    if exp_id == "4.8":
        by_n = {int(label.split()[0]): m for label, m in present.items()}
        thesis = {int(label.split()[0]): t for label, t in THESIS["4.8"].items()}
        figures.by_passes(by_n, thesis, figure_dir / "passes.png")
        paths.append(f"{rel}/passes.png")
    return paths


def _cams(models: dict[str, ModelFile], dataset, classes, spec: Budget, figure_dir: Path, rel: str,
          device, seed: int) -> str:
    title = "## Figure 4.6: class activation maps\n\n"
    plain = build_row_model(models[BASE], Row("plain", BASE, (("method", "none"),), ()), "cpu")
    trained = build_row_model(models[SMOOTHBLOCK], Row("sb", SMOOTHBLOCK, tuple(sorted(
        {**_SB, "defense_at": "both", "ensemble": 1}.items())), ()), "cpu")
    subset = dataset.take(slice(0, spec.cam_images))
    images = subset.images.float() / 255
    path = figures.cam_grid({"plain": plain, "SmoothBlock-trained": trained}, images, subset.labels, classes,
                            figure_dir / "cams.png", seed=seed)
    return (title + "Grad-CAM (torchcam) at the last stage of the plain model and of the SmoothBlock-trained model "
            "(SmoothBlock on, one draw), on the first test images and on PGD-7 images (8/255) crafted against "
            f"each model; titles give each model's prediction.\n\n![4.6]({rel}/{path.name})\n")
