"""Export the best configurations of a finished search, as files ``smoothblock train --config`` takes.

The source of truth is MLflow: the child runs of the search, their metrics, tags and their
``smoothblock.config`` tag and ``audit.json`` artifact. The best audited finalist comes first; each file states
the figure it claims as ``robust_acc`` with the audit beside it (``smoothblock train`` reads past
both).

What a file trains depends on what the trial was:

* a training search's trial: its model in full, ``epochs`` back to the recipe's, ``subset`` back
  to all training images (the search's short schedule was for ranking only);
* a post-hoc trial (a defense put into a trained model): a fine-tune of *that* model
  (``init_from``) with the defense on in training as well as at test time (``defense_at: both``,
  the thesis' Section 4.5 setting), :data:`FINE_TUNE` epochs at a tenth of the recipe's peak rate,
  whose result can be compared with the post-hoc one. Beside it, ``<out>.safetensors`` is the
  scored model itself, the trained weights with the trial's defense:
  ``load_model("best.safetensors")`` or ``smoothblock evaluate --model best.safetensors``.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from smoothblock import Config
from smoothblock.attacks import AttackSettings
from smoothblock.checkpoint import atomic_write, load_checkpoint, read_provenance, save_weights
from smoothblock.config import file_record
from smoothblock.errors import CheckpointError, ConfigError
from smoothblock.hub import resolve
from smoothblock.stats import interval_names

from . import tracking
from .config import METRIC
from .ranking import pareto_front, rank
from .tracking import AUDIT_PREFIX, AUDITED, CONFIG_TAG


#: A post-hoc winner's fine-tune: epochs and the peak learning rate (the recipe's is 0.1).
FINE_TUNE = {"epochs": 30, "lr": 0.01}


def finished_trials(client, name: str) -> tuple[list[dict[str, Any]], dict[str, str], str]:
    """The search's FINISHED child runs as rows (metrics, run_id), the parent run's params and the
    objective's metric."""
    experiment = tracking.find_experiment(client, name)
    parent = tracking.parent_run_id(client, experiment.experiment_id) if experiment else None
    if parent is None:
        raise ConfigError(f"MLflow holds no search named {name!r}")
    params = client.get_run(parent).data.params
    rows = [{**run.data.metrics, "run_id": run.info.run_id, "run_name": run.info.run_name,
             "stopped_early": tracking.STOPPED_TAG in run.data.tags,
             **({"obfuscated": run.data.tags.get("obfuscated") == "true"} if "obfuscated" in run.data.tags else {})}
            for run in tracking.child_runs(client, experiment.experiment_id, parent)
            if run.info.status == "FINISHED"]
    if "attack" in params:
        raise ConfigError(f"search {name!r} was scored by one attack ({params['attack']}), before robust_acc; "
                          "run it again to export it")
    metric = METRIC
    rows = [r for r in rows if {"clean_acc", metric, "passes"} <= set(r)]
    if not rows:
        raise ConfigError(f"search {name!r} has no finished trial to export yet")
    return rows, params, metric


def export(name: str, out: str, *, top: int = 1, pareto: bool = False, mlflow_uri: str | None = None) -> list[Path]:
    """Write the best ``top`` trials (or the Pareto front) as training configurations.

    One trial -> ``out``; several -> ``out`` with ``-1``, ``-2``, ... before the suffix.
    Returns the paths written.
    """
    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    client = tracking.connect(tracking.resolve_tracking_uri(mlflow_uri))
    rows, params, metric = finished_trials(client, name)
    floor = float(params["min_clean_acc"]) if params.get("min_clean_acc", "None") != "None" else None
    chosen = pareto_front(rows, metric) if pareto else rank(rows, metric, floor)[:top]
    out_path = Path(out)
    if out_path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"-o must name a .yaml file, got {out}")
    targets = [out_path] if len(chosen) == 1 else [
        out_path.with_name(f"{out_path.stem}-{i}{out_path.suffix}") for i in range(1, len(chosen) + 1)]
    posthoc = params.get("trainable") == "posthoc"
    base = _base_model(params["model"]) if posthoc else None
    texts, weights = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, row in enumerate(chosen, 1):
            trial = Config.from_yaml(client.get_run(row["run_id"]).data.tags[CONFIG_TAG],
                                     source=f"the configuration of run {row['run_id']}")
            head = f"# Exported from search {name}, trial {row['run_name']} (MLflow run {row['run_id']}).\n"
            if posthoc:
                cfg = trial.replace(init_from=params["model"], defense_at="both", subset=None,
                                    out_dir=f"runs/{name}-best-{i}", **FINE_TUNE)
                head += (f"# The defense was scored in {params['model']}; {{weights}} is that model with it\n"
                         f"# (smoothblock evaluate --model {{weights}} --methods none {trial.method}). This file\n"
                         f"# fine-tunes the model with the\n"
                         f"# defense in training too (thesis Section 4.5): smoothblock train --config {{config}}\n")
                weights.append(trial.replace(defense_at="test"))
            else:
                cfg = trial.replace(epochs=None, subset=None, out_dir=f"runs/{name}-best-{i}")
                head += "# Train it: smoothblock train --config {config}\n"
            texts.append(head + yaml.safe_dump(record(client, row, params, tmp + f"/{i}"), sort_keys=False)
                         + cfg.to_yaml())
    for j, (path, text) in enumerate(zip(targets, texts)):  # every file is read before any is written
        path.parent.mkdir(parents=True, exist_ok=True)
        text = text.replace("{config}", str(path)).replace("{weights}", str(path.with_suffix(".safetensors")))
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
        if posthoc:
            _, state_dict, provenance = base
            record_ = {**provenance, "defense_from": f"search {name}, MLflow run {chosen[j]['run_id']}"}
            save_weights(path.with_suffix(".safetensors"), state_dict, weights[j], provenance=record_)
    return targets + [p.with_suffix(".safetensors") for p in targets if posthoc]


def _base_model(model: str) -> tuple[Path, dict, dict]:
    """The post-hoc search's trained model, read before anything is written: (path, weights,
    its provenance record with the file named, not its path)."""
    try:
        path = resolve(model)
    except CheckpointError:
        raise ConfigError(f"the search's model {model} is not on this machine (a shipped name or a file); "
                          "export where it is") from None
    _, state_dict = load_checkpoint(path)
    provenance = read_provenance(path) if path.suffix == ".safetensors" else {}
    return path, state_dict, {"weights": file_record(model), **provenance}


def record(client, row: dict[str, Any], params: dict[str, str], tmp: str) -> dict[str, Any]:
    """What an exported file claims: ``robust_acc`` (the audited figure for an audited finalist,
    else the search's), ``clean_acc`` and, beside them, how each was measured."""
    images = int(row["images"]) if "images" in row else int(params.get("val_images", 0))
    eps = params.get("eps", "None")
    threat = AttackSettings(norm=params.get("norm", "linf"), eps=None if eps == "None" else float(eps)).threat_model
    out: dict[str, Any] = {"robust_acc": round(float(row.get(AUDITED, row[METRIC])), 4),
                           "clean_acc": round(float(row["clean_acc"]), 4)}
    # The gain over the undefended base: on the audit's fresh images for an audited finalist, else
    # on the search's own images.
    fresh = AUDITED in row and f"{AUDIT_PREFIX}robust_gain" in row
    prefix, counted = (AUDIT_PREFIX, int(row.get(f"{AUDIT_PREFIX}images", 0))) if fresh else ("", images)
    for name in ("robust_gain", "clean_cost"):
        if f"{prefix}{name}" in row:
            estimate, low, high = (round(float(row[prefix + key]), 4) for key in interval_names(name))
            out[name] = {"estimate": estimate, "low": low, "high": high, "images": counted,
                         "split": "validation, fresh images (the audit's)" if fresh else "validation (the search's)",
                         "interval": "95%, paired (Newcombe's hybrid score, smoothblock.stats)"}
    draws = {"search_seed": int(params.get("search_seed", params.get("seed", 0))), "eot_iter": int(params.get("eot_iter", 0)),
             "eot_steps": int(params.get("eot_steps", 0))}
    search = {"split": "validation", "images": images, **draws, "attacks": json.loads(params.get("attacks", "[]")),
              "threat_model": threat, "robust_acc": round(float(row[METRIC]), 4),
              "accuracy": _figures({k: v for k, v in row.items() if not k.startswith("audit")})}
    if AUDITED not in row:
        out["audit"] = {"audited": False, "search": search}
        return out
    audit = json.loads(Path(client.download_artifacts(row["run_id"], "audit.json", tmp)).read_text())
    metrics = audit["metrics"]
    out["audit"] = {"audited": True, "obfuscated": bool(audit["reasons"]), "reasons": audit["reasons"],
                    "split": "validation", "images": int(metrics["images"]), **draws,
                    "attacks": audit["attacks"] + ["unbounded"], "threat_model": f"{threat} (unbounded: L-inf 1)",
                    "accuracy": _figures(metrics), "search": search}
    return out


def _figures(metrics: dict[str, Any]) -> dict[str, float]:
    """The fractions among ``metrics`` (accuracies and what each attack broke), to 4 places."""
    return {k: round(float(v), 4) for k, v in metrics.items() if k.endswith(("_acc", "_broke"))}
