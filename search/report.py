"""The summary a finished search prints: its best trials and where to look next."""
from __future__ import annotations

import json
from typing import Any

from .export import AUDITED, pareto_front, rank
from .tuner import Outcome

SHOWN = ("method", "positions", "block_size", "keep_prob", "gamma", "mean", "smooth_prob", "ensemble",
         "defense_at", "adv_training")


def summary_table(rows: list[dict[str, Any]], metric: str, limit: int = 5) -> str:
    """A markdown table of ``rows`` (already ordered): parameters that vary, then the scores."""
    rows = rows[:limit]
    params = [p for p in SHOWN if any(p in r for r in rows)]
    audited = any(AUDITED in r for r in rows)
    header = ["trial", *params, "clean_acc", metric, *(["audited", "obfuscated"] if audited else []), "passes"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [str(row.get("trial_id", ""))]
        for p in params:
            value = row.get(p, "")
            cells.append(f"{value:.3f}" if isinstance(value, float) else
                         json.dumps(value) if isinstance(value, list) else str(value))
        cells += [f"{row['clean_acc']:.4f}", f"{row[metric]:.4f}" + (" (stopped)" if row.get("stopped_early") else "")]
        if audited:
            cells += [f"{row[AUDITED]:.4f}", "yes" if row["obfuscated"] else "no"] if AUDITED in row else ["", ""]
        cells.append(str(row["passes"]))
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
        print(f"{title} (validation split, {search.val_images} images, objective {search.metric}: the per-image "
              f"worst case over {', '.join(search.attacks)}):")
        print(summary_table(best, search.metric, limit=len(best) if search.multi_objective else 5))
        audited = [r for r in rank(finished, search.metric, search.min_clean_acc) if AUDITED in r]
        if audited:
            print(f"audit of the {len(audited)} finalist{'s' if len(audited) > 1 else ''} ({search.audit_images} "
                  "validation images; AutoAttack-rand, Square, EOT-PGD with twice the draws, PGD at eps 1):")
            for row in audited:
                print("  " + audit_line(row, search.metric))
    if outcome.baseline:
        print(f"undefended model on the same images: clean_acc {outcome.baseline['clean_acc']:.4f}, "
              f"{search.metric} {outcome.baseline[search.metric]:.4f}")
    print(f"MLflow: experiment {search.name!r} (id {outcome.experiment_id}) in {outcome.tracking_uri}; "
          f"open it with: smoothblock ui" + (f" --mlflow-uri {outcome.tracking_uri}" if "://" in outcome.tracking_uri
                                             and not outcome.tracking_uri.startswith("sqlite") else ""))
    print(f"export the best: smoothblock export {search.name} -o best.yaml")


def audit_line(row: dict[str, Any], metric: str) -> str:
    """One finalist's audit: its score before and after, which attacks broke how many images (%),
    the unbounded check, and the verdict."""
    broke = {k[:-len("_broke")]: v for k, v in row["audit"].items() if k.endswith("_broke") and v > 0}
    by = ", ".join(f"{k} {100 * v:.1f}" for k, v in sorted(broke.items(), key=lambda kv: -kv[1])) or "none"
    verdict = ("OBFUSCATED: " + "; ".join(row["audit_reasons"]) if row["obfuscated"]
               else "no indicator of a failed attack")
    return (f"{row['trial_id']}: {metric} {row[metric]:.4f} -> audited {row[AUDITED]:.4f} (images broken, %: {by}; "
            f"unbounded leaves {100 * row['audit']['unbounded_acc']:.1f}%); {verdict}")
