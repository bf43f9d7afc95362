"""Post-hoc trial (thesis Section 4.2): put the trial's defense into a trained model and score it.

The score is ``robust_acc``, the per-image worst case over the search's attacks, on the first
``val_images`` validation images. They are scored in chunks of ``chunk_images`` and the running
figure is reported after each, so a scheduler (ASHA) can stop a clearly worse defense before it
has seen them all: multi-fidelity over images.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from ray import tune

from smoothblock import Config
from smoothblock.attacks import ATTACKS
from smoothblock.evaluation import evaluate
from smoothblock.defended import Autocast
from smoothblock.hub import model_from_state
from smoothblock.train import resolve_device

from .assets import (SCHEDULER_METRIC, Assets, Recorded, Scoring, asha_score, attack_batch, release_memory,
                     trial_config)

#: Metrics that are counts, not fractions: summed over chunks, not averaged (an attack's limit
#: is reported under the name of its AttackSettings field).
COUNTS = ("images", "robust_images", *sorted({a.limit for a in ATTACKS.values() if a.limit}))


def score_chunks(cfg: Config, search: Scoring, assets: Assets) -> Iterator[dict[str, float]]:
    """``cfg``'s defense in the assets' trained model, scored chunk by chunk on the first
    ``val_images`` validation images; yields the running metrics after each chunk: ``clean_acc``,
    ``robust_acc``, each attack's ``<name>_acc`` or ``<name>_broke``, ``images`` (so far), ``passes``."""
    device = resolve_device(cfg.device)
    torch.set_grad_enabled(True)
    model = model_from_state(cfg, assets.state_dict, device=device, source=str(search.model))
    if search.attack_bf16:
        model = Autocast(model, device.type)
    val = assets.splits.val
    total = min(search.val_images, len(val))
    sums: dict[str, float] = {}
    for chunk, start in enumerate(range(0, total, search.chunk_images)):
        stop = min(total, start + search.chunk_images)
        # Each chunk is seeded on its own, so a chunk's figures do not depend on the chunks before.
        metrics = evaluate(model, val.take(slice(start, stop)), attacks=search.attacks,
                           settings=search.attack_settings(), seed=search.search_seed + chunk, device=device,
                           batch_size=attack_batch(cfg, search.attack_rows, device),
                           num_classes=cfg.num_classes, progress=False, cascade=True,
                           precomputed=assets.precomputed(start, stop))
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + (value if key in COUNTS else value * metrics["images"])
        running = {k: (v if k in COUNTS else v / sums["images"]) for k, v in sums.items()}
        running["passes"] = cfg.passes
        running[SCHEDULER_METRIC] = asha_score(running)
        yield running


def score(cfg: Config, search: Scoring, assets: Assets) -> dict[str, float]:
    """The final metrics of :func:`score_chunks` (all ``val_images`` images)."""
    for metrics in score_chunks(cfg, search, assets):
        pass
    return metrics


def undefended_score(search: Scoring, assets: Assets) -> dict[str, float]:
    """The reference every trial is compared with: the same model, images, attacks and seeds, no defense."""
    return score(assets.base.replace(method="none"), search, assets)


def posthoc_trial(params: dict[str, Any], *, search: Scoring, assets: Assets,
                  recorded: Recorded | None = None) -> None:
    """Ray Tune function trainable: one report per chunk of validation images.

    Args:
        params: the trial's sampled configuration fields (from :mod:`search.space`).
        search: the search's configuration (attacks, val_images, chunk_images, seed, model).
        assets: weights, validation images and the shared transfer examples, from the object store.
        recorded: on resume, what MLflow already holds as FINISHED: a trial found there (by id,
            or by its configuration) reports that result instead of running again.

    Reports ``clean_acc``, ``robust_acc``, the attacks' metrics, ``passes`` and ``images``.
    """
    cfg = trial_config(assets.base, params)
    done = recorded.lookup(tune.get_context().get_trial_id(), cfg) if recorded else None
    if done is not None:
        tune.report(done)
        return
    try:
        for metrics in score_chunks(cfg, search, assets):
            tune.report(metrics)
    finally:
        release_memory()
