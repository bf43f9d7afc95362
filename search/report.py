"""The summary a finished search prints: its best trials and where to look next."""
from __future__ import annotations

import json
from typing import Any

from .export import pareto_front, rank
from .tuner import Outcome

SHOWN = ("method", "positions", "block_size", "keep_prob", "gamma", "mean", "smooth_prob", "ensemble",
         "defense_at", "adv_training")


def summary_table(rows: list[dict[str, Any]], metric: str, limit: int = 5) -> str:
    """A markdown table of ``rows`` (already ordered): parameters that vary, then the scores."""
    rows = rows[:limit]
    params = [p for p in SHOWN if any(p in r for r in rows)]
    header = ["trial", *params, "clean_acc", metric, "passes"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [str(row.get("trial_id", ""))]
        for p in params:
            value = row.get(p, "")
            cells.append(f"{value:.3f}" if isinstance(value, float) else
                         json.dumps(value) if isinstance(value, list) else str(value))
        cells += [f"{row['clean_acc']:.4f}", f"{row[metric]:.4f}", str(row["passes"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_summary(outcome: Outcome) -> None:
    search = outcome.search
    finished = [r for r in outcome.rows if r["status"] == "TERMINATED" and search.metric in r]
    failed = sum(r["status"] == "ERROR" for r in outcome.rows)
    print(f"\nsearch {search.name}: {len(finished)} trials finished, {failed} failed")
    if finished:
        best = pareto_front(finished, search.metric) if search.multi_objective else \
            rank(finished, search.metric, search.min_clean_acc)
        title = "Pareto front" if search.multi_objective else "best trials"
        print(f"{title} (validation split, {search.val_images} images, objective {search.metric}):")
        print(summary_table(best, search.metric, limit=len(best) if search.multi_objective else 5))
    if outcome.baseline:
        print(f"undefended model on the same images: clean_acc {outcome.baseline['clean_acc']:.4f}, "
              f"{search.metric} {outcome.baseline[search.metric]:.4f}")
    print(f"MLflow: experiment {search.name!r} (id {outcome.experiment_id}) in {outcome.tracking_uri}; "
          f"open it with: smoothblock ui" + (f" --mlflow-uri {outcome.tracking_uri}" if "://" in outcome.tracking_uri
                                             and not outcome.tracking_uri.startswith("sqlite") else ""))
    print(f"export the best: smoothblock export {search.name} -o best.yaml")
