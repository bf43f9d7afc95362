"""Post-hoc trial (thesis Section 4.2): put the trial's defense into a trained model and score it."""
from __future__ import annotations

from typing import Any

import torch
from ray import tune

from smoothblock import Config
from smoothblock.attacks import AttackSettings
from smoothblock.evaluation import evaluate
from smoothblock.hub import model_from_state
from smoothblock.train import resolve_device

from .assets import Assets, Recorded, Scoring, trial_config


def objective_attacks(attack: str) -> tuple[str, ...]:
    """The attacks a trial runs for its objective (``evaluate`` always adds clean accuracy)."""
    return (attack,)


def score(cfg: Config, search: Scoring, assets: Assets) -> dict[str, float]:
    """``cfg``'s defense in the assets' trained model, scored on the first ``val_images``
    validation images: ``clean_acc``, the objective's accuracy (``pgd_acc``, ...), ``n``, ``passes``."""
    device = resolve_device(cfg.device)
    torch.set_grad_enabled(True)
    model = model_from_state(cfg, assets.state_dict, device=device, source=str(search.model))
    metrics = evaluate(model, assets.splits.val, attacks=objective_attacks(search.attack),
                       n=search.val_images, settings=AttackSettings(eot_iter=search.eot_iter, eot_n=search.val_images),
                       seed=search.seed, device=device, num_classes=cfg.num_classes, progress=False)
    metrics["passes"] = cfg.passes
    return metrics


def undefended_score(search: Scoring, assets: Assets) -> dict[str, float]:
    """The reference every trial is compared with: the same model, images, attack and seed, no defense."""
    return score(assets.base.replace(method="none"), search, assets)


def posthoc_trial(params: dict[str, Any], *, search: Scoring, assets: Assets,
                  recorded: Recorded | None = None) -> None:
    """Ray Tune function trainable: one evaluation on the validation split, one report.

    Args:
        params: the trial's sampled configuration fields (from :mod:`search.space`).
        search: the search's configuration (attack, val_images, eot_iter, seed, model).
        assets: weights and validation images from the object store.
        recorded: on resume, what MLflow already holds as FINISHED: a trial found there (by id,
            or by its configuration) reports that result instead of running again.

    Reports ``clean_acc``, the objective's accuracy (``pgd_acc``, ...), ``passes`` and ``n``.
    """
    cfg = trial_config(assets.base, params)
    done = recorded.lookup(tune.get_context().get_trial_id(), cfg) if recorded else None
    tune.report(done if done is not None else score(cfg, search, assets))
