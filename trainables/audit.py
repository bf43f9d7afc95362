"""The audit of a finished trial's defense (:mod:`smoothblock.audit`), run as a Ray task by the search.

A posthoc trial's defended model is the shared trained weights with the trial's defense; a
training trial's is the weights of its last checkpoint (``last.pt``, read with the weights-only
unpickler). The transfer examples are the search's shared ones (posthoc) or crafted here on the
trial's own weights with the defense off (train).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from smoothblock.audit import audit
from smoothblock.checkpoint import load_training_state
from smoothblock.defended import Autocast
from smoothblock.hub import model_from_state
from smoothblock.device import resolve_device

from .assets import Assets
from .params import trial_config
from .scoring import Scoring, attack_batch

if TYPE_CHECKING:
    from ray.tune import Checkpoint


def audit_defense(params: dict[str, Any], search: Scoring, assets: Assets,
                  checkpoint: Checkpoint | None = None) -> dict[str, Any]:
    """Audit a trial's defense on ``audit_images`` fresh validation images: the ones after the
    search's ``val_images``, which no trial was scored on.

    Args:
        params: the trial's sampled configuration fields (``{"method": "none"}``: the undefended base).
        checkpoint: a training trial's last checkpoint; None for a posthoc trial.

    Returns:
        ``{"metrics": {...}, "reasons": [...], "attacks": [...], "outcomes": {"clean", "robust"}}``
        (see :class:`smoothblock.audit.AuditResult`; outcomes: (images,) bool per fresh image).
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
    fresh = slice(search.val_images, search.val_images + search.audit_images)
    outcomes: dict[str, torch.Tensor] = {}
    result = audit(model, assets.splits.val.take(fresh), suite=search.attacks, settings=search.attack_settings(),
                   seed=search.search_seed, device=device, num_classes=cfg.num_classes,
                   precomputed=assets.precomputed(fresh.start, fresh.stop), outcomes=outcomes,
                   batch_size=attack_batch(cfg, search.attack_rows, device))
    return {"metrics": result.metrics, "reasons": result.reasons, "attacks": list(result.attacks),
            "outcomes": outcomes}
