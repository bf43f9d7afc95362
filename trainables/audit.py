"""The audit of a finished trial's defense (:mod:`smoothblock.audit`), run as a Ray task by the search.

A posthoc trial's defended model is the shared trained weights with the trial's defense; a
training trial's is the weights of its last checkpoint (``last.pt``, read with the weights-only
unpickler). The transfer examples are the search's shared ones (posthoc) or crafted here on the
trial's own weights with the defense off (train).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ray import tune

from smoothblock.audit import audit
from smoothblock.checkpoint import load_training_state
from smoothblock.defended import Autocast
from smoothblock.hub import model_from_state
from smoothblock.train import resolve_device

from .assets import Assets, Scoring, attack_batch, trial_config


def audit_defense(params: dict[str, Any], search: Scoring, assets: Assets,
                  checkpoint: tune.Checkpoint | None = None) -> dict[str, Any]:
    """Audit a trial's defense on the first ``audit_images`` validation images.

    Args:
        params: the trial's sampled configuration fields.
        checkpoint: a training trial's last checkpoint; None for a posthoc trial.

    Returns:
        ``{"metrics": {...}, "reasons": [...], "attacks": [...]}`` (see :class:`smoothblock.audit.AuditResult`).
    """
    cfg = trial_config(assets.base, params)
    device = resolve_device(cfg.device)
    torch.set_grad_enabled(True)
    if checkpoint is None:
        model = model_from_state(cfg, assets.state_dict, device=device, source=str(search.model))
    else:
        with checkpoint.as_directory() as folder:
            path = Path(folder) / "last.pt"
            state = load_training_state(path)
        model = model_from_state(cfg, state["model"], device=device, source=str(path))
    if search.attack_bf16:
        model = Autocast(model, device.type)
    result = audit(model, assets.splits.val, suite=search.attacks, images=search.audit_images,
                   settings=search.attack_settings(), seed=search.search_seed, device=device,
                   num_classes=cfg.num_classes, precomputed=assets.precomputed(0, search.audit_images),
                   batch_size=attack_batch(cfg, search.attack_rows, device))
    return {"metrics": result.metrics, "reasons": result.reasons, "attacks": list(result.attacks)}
