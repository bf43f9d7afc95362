"""Which trials are best: the ranking every summary, report and export uses, and the Pareto front."""
from __future__ import annotations

from typing import Any

from .tracking import AUDITED


def rank(rows: list[dict[str, Any]], metric: str, min_clean_acc: float | None = None) -> list[dict[str, Any]]:
    """Feasible trials first (clean_acc >= min_clean_acc); then the audited finalists by their
    audited figure, then trials that saw every image or epoch, then those the scheduler stopped;
    within each, by ``metric`` (finalists by the audited figure, then ``metric``), clean_acc, fewer
    passes, then the sampled configuration and last the trial id: ties are common (an identity
    layer, a tiny search), and the search's summary, ``report`` and ``export`` read the trials in
    different orders, so without it they could name different winners. The configuration comes
    before the id because Ray's trial ids are random: the same search run twice must audit the
    same finalists."""
    floor = min_clean_acc or 0.0
    return sorted(rows, key=lambda r: (r["clean_acc"] < floor, AUDITED not in r, bool(r.get("stopped_early")),
                                       -r.get(AUDITED, r[metric]), -r[metric], -r["clean_acc"], r["passes"],
                                       [str(r.get(k)) for k in SAMPLED], str(r.get("trial_id", ""))))


#: What a trial's row holds of its sampled configuration, as both the Tune results and MLflow give it.
SAMPLED = ("method", "positions", "block_size", "keep_prob", "gamma", "mean", "smooth_prob", "ensemble",
           "lr", "epochs", "weight_decay", "cutout")


def pareto_front(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Trials no other trial beats on clean_acc, ``metric`` and passes (max, max, min) at once."""
    def key(r):
        return (r["clean_acc"], r[metric], -r["passes"])

    front = [r for r in rows if not any(all(a >= b for a, b in zip(key(o), key(r))) and key(o) != key(r)
                                        for o in rows)]
    return sorted(front, key=lambda r: -r[metric])
