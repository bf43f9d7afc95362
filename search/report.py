"""A search's summary: its best trials, the audit of its finalists, the undefended model, where to
look next. Printed when a search ends, and by ``smoothblock report NAME`` from MLflow alone (a
search that ran on a cluster, or long ago), with the parameters' importances, as Markdown too."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from smoothblock.attacks import ATTACKS, metric_name
from smoothblock.checkpoint import atomic_write
from smoothblock.errors import ConfigError
from smoothblock.stats import interval_names

from . import tracking
from .config import SearchConfig
from .ranking import pareto_front, rank
from .outcome import BASELINE_PREFIX, Outcome
from .tracking import AUDITED

SHOWN = ("method", "positions", "block_size", "keep_prob", "gamma", "mean", "smooth_prob", "ensemble",
         "defense_at", "adv_training")


def summary_table(rows: list[dict[str, Any]], metric: str, limit: int = 5) -> str:
    """A markdown table of ``rows`` (already ordered): parameters that vary, then the scores."""
    rows = rows[:limit]
    params = [p for p in SHOWN if any(p in r for r in rows)]
    audited = any(AUDITED in r for r in rows)
    gained = [g for g in GAINS if any(g in r for r in rows)]
    header = ["trial", *params, "clean_acc", metric, *(f"{g} (95% CI)" for g in gained),
              *(["audited", "obfuscated"] if audited else []), "passes"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [str(row.get("trial_id", ""))]
        for p in params:
            value = row.get(p, "")
            cells.append(f"{value:.3f}" if isinstance(value, float) else
                         json.dumps(value) if isinstance(value, list) else str(value))
        cells += [f"{row['clean_acc']:.4f}", f"{row[metric]:.4f}" + (" (stopped)" if row.get("stopped_early") else "")]
        cells += [interval(row, g) for g in gained]
        if audited:
            cells += [f"{row[AUDITED]:.4f}", "yes" if row["obfuscated"] else "no"] if AUDITED in row else ["", ""]
        cells.append(str(row["passes"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: A trial's paired comparisons with the undefended base (trainables.baseline), each with its interval.
GAINS = ("robust_gain", "clean_cost")


def interval(row: dict[str, Any], name: str) -> str:
    """``+0.0120 (-0.0040..+0.0280)``: a row's ``name`` and its ``name_low``..``name_high``."""
    if name not in row:
        return ""
    estimate, low, high = (row[k] for k in interval_names(name))
    return f"{estimate:+.4f} ({low:+.4f}..{high:+.4f})"


def summary_lines(outcome: Outcome) -> list[str]:
    search = outcome.search
    finished = [r for r in outcome.rows if r["status"] == "TERMINATED" and search.metric in r]
    failed = sum(r["status"] == "ERROR" for r in outcome.rows)
    lines = [f"search {search.name}: {len(finished)} trials finished, {failed} failed"]
    if finished:
        best = pareto_front(finished, search.metric) if search.multi_objective else \
            rank(finished, search.metric, search.min_clean_acc)
        title = "Pareto front" if search.multi_objective else "best trials"
        lines.append(f"{title} (validation split, {search.val_images} images, objective {search.metric}: the "
                     f"per-image worst case over {', '.join(search.attacks)}):")
        lines.append(summary_table(best, search.metric, limit=len(best) if search.multi_objective else 5))
        audited = [r for r in rank(finished, search.metric, search.min_clean_acc) if AUDITED in r]
        if audited:
            lines.append(f"audit of the {len(audited)} finalist{'s' if len(audited) > 1 else ''} "
                         f"({search.audit_images} fresh validation images, which no trial saw; AutoAttack-rand, "
                         "Square, EOT-PGD with twice the draws, PGD at eps 1):")
            lines += ["  " + audit_line(row, search.metric) for row in audited]
            if "robust_gain" in audited[0]["audit"]:
                lines.append(verdict(audited[0]))
    if outcome.baseline:
        lines.append(f"undefended model on the same images: clean_acc {outcome.baseline['clean_acc']:.4f}, "
                     f"{search.metric} {outcome.baseline[search.metric]:.4f}")
    lines.append(f"MLflow: experiment {search.name!r} (id {outcome.experiment_id}) in {outcome.tracking_uri}; "
                 f"open it with: smoothblock ui" + (f" --mlflow-uri {outcome.tracking_uri}"
                                                    if "://" in outcome.tracking_uri
                                                    and not outcome.tracking_uri.startswith("sqlite") else ""))
    lines.append(f"export the best: smoothblock export {search.name} -o best.yaml")
    return lines


#: Said of a finalist whose defense changes no output of the undefended model (its ``identity``
#: metric): its gain is then the attacks' noise between a randomised and a deterministic model.
IDENTITY = "it is the identity: it changes no output of the undefended model"


def verdict(best: dict[str, Any]) -> str:
    """The search's answer in one sentence: the best audited finalist's gain in worst-case robust
    accuracy over the undefended base on the fresh images, with its paired 95% interval (and, when
    that finalist changes no output, that it is the identity: no defense at all)."""
    audit = best["audit"]
    gain, low, high = (100 * audit[k] for k in interval_names("robust_gain"))
    images = int(audit["images"])
    if low > 0:
        return (f"the best defense adds {gain:.1f} points (95% CI {low:.1f}..{high:.1f}) of worst-case robust "
                f"accuracy over the undefended model on {images} fresh images")
    return (f"no defense adds robustness distinguishable from zero (best: {gain:+.1f} points, 95% CI "
            f"{low:+.1f}..{high:+.1f}, on {images} fresh images" + ("; " + IDENTITY if best.get("identity") else "")
            + ")")


def print_summary(outcome: Outcome) -> None:
    print("\n" + "\n".join(summary_lines(outcome)))


def outcome_from_mlflow(name: str, mlflow_uri: str | None = None) -> tuple[Outcome, Any]:
    """A finished (or interrupted) search as MLflow holds it: its configuration, one row per trial
    (parameters, last metrics, audit), the undefended model's scores; and the MLflow client."""
    uri = tracking.resolve_tracking_uri(mlflow_uri)
    client = tracking.connect(uri)
    experiment = tracking.find_experiment(client, name)
    parent = tracking.parent_run_id(client, experiment.experiment_id) if experiment else None
    if parent is None:
        raise ConfigError(f"MLflow holds no search named {name!r} in {tracking.redact(uri)}")
    search = SearchConfig.from_yaml(tracking.search_yaml(client, parent), source=f"search {name!r} in MLflow")
    rows = []
    for run in tracking.child_runs(client, experiment.experiment_id, parent):
        metrics = run.data.metrics
        row = {"trial_id": run.data.tags.get(tracking.TRIAL_TAG, run.info.run_id[:8]), "run_id": run.info.run_id,
               "status": {"FINISHED": "TERMINATED", "FAILED": "ERROR"}.get(run.info.status, run.info.status),
               **json.loads(run.data.tags.get(tracking.SAMPLED_TAG, "{}")),
               **{k: v for k, v in metrics.items() if not k.startswith(tracking.AUDIT_PREFIX)},
               "stopped_early": tracking.STOPPED_TAG in run.data.tags}
        if AUDITED in metrics:
            row["audit"] = {k[len(tracking.AUDIT_PREFIX):]: v for k, v in metrics.items()
                            if k.startswith(tracking.AUDIT_PREFIX)}
            row["audit_reasons"] = [x for x in run.data.tags.get("obfuscated_reason", "").split("; ") if x]
            row["obfuscated"] = bool(row["audit_reasons"])
        if "passes" in row:
            row["passes"] = int(row["passes"])
        rows.append(row)
    parent_metrics = client.get_run(parent).data.metrics
    baseline = {k[len(BASELINE_PREFIX):]: v for k, v in parent_metrics.items() if k.startswith(BASELINE_PREFIX)}
    return Outcome(search, tracking.redact(uri), experiment.experiment_id, parent, "", rows, baseline or None), client


def importance_lines(outcome: Outcome, client) -> list[str]:
    """fANOVA importances of the searched parameters for the objective (Optuna), or nothing when
    the study is too small or every trial scored the same."""
    import optuna

    from .plots import rebuild_study

    runs = tracking.child_runs(client, outcome.experiment_id, outcome.parent_run_id)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks some importance options experimental
            study = rebuild_study(outcome.search, runs)
            target = (lambda t: t.values[1]) if outcome.search.multi_objective else None
            importances = optuna.importance.get_param_importances(study, target=target)
    except (ValueError, RuntimeError):
        return []
    finally:
        optuna.logging.set_verbosity(level)
    if not importances:
        return []
    return [f"parameter importances for {outcome.search.metric} (fANOVA over {len(study.trials)} trials):",
            "| parameter | importance |", "| --- | --- |",
            *(f"| {name} | {value:.3f} |" for name, value in importances.items())]


def report(name: str, out: str | None = None, mlflow_uri: str | None = None) -> str:
    """``smoothblock report NAME``: the summary and the importances, printed, and written as
    Markdown to ``out`` when given."""
    outcome, client = outcome_from_mlflow(name, mlflow_uri)
    text = "\n".join([*summary_lines(outcome), "", *importance_lines(outcome, client)]).rstrip() + "\n"
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(f"# Search {name}\n\n" + text, encoding="utf-8"))
    return text


def audit_line(row: dict[str, Any], metric: str) -> str:
    """One finalist's audit: its score before and after, which attacks broke how many images (%),
    the unbounded check, and the verdict."""
    broke = {name: row["audit"][metric_name(name, "broke")] for name in ATTACKS
             if row["audit"].get(metric_name(name, "broke"), 0) > 0}
    by = ", ".join(f"{k} {100 * v:.1f}" for k, v in sorted(broke.items(), key=lambda kv: -kv[1])) or "none"
    state = ("OBFUSCATED: " + "; ".join(row["audit_reasons"]) if row["obfuscated"]
             else "no indicator of a failed attack")
    gain = (f"; over the base {interval(row['audit'], 'robust_gain')}" if "robust_gain" in row["audit"] else "")
    return (f"{row['trial_id']}: {metric} {row[metric]:.4f} -> audited {row[AUDITED]:.4f}{gain} (images broken, %: "
            f"{by}; unbounded leaves {100 * row['audit']['unbounded_acc']:.1f}%); {state}"
            + ("; " + IDENTITY if row.get("identity") else ""))
