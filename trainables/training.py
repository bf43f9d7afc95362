"""Training trial (thesis Sections 4.3-4.5): train with the trial's defense, report every epoch.

Each epoch ends with the clean and robust accuracy of the whole defended model (ensemble
included) on the validation images, and a checkpoint of the run folder (``last.pt``
holds weights, optimizer and history). A restarted trial (a node died, the search resumed) goes
on from that checkpoint; ASHA stops weak trials between epochs.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothblock.defended import wrap_for_inference
from smoothblock.evaluation import evaluate
from smoothblock.device import resolve_device
from smoothblock.train import train

from .assets import Assets
from .params import trial_config
from .recorded import Recorded
from . import session
from .scoring import SCHEDULER_METRIC, Scoring, asha_score


def training_trial(params: dict[str, Any], *, search: Scoring, assets: Assets,
                   recorded: Recorded | None = None) -> None:
    """Ray Tune function trainable: ``smoothblock.train`` with a report and a checkpoint per epoch.

    Reports the training log's fields (``train_loss``, ``train_acc`` or, trained on adversarial examples only, ``train_adv_acc``, ``epoch``, ``lr``) and the
    defended model's ``clean_acc``, ``robust_acc`` (the worst case over the search's attacks), the
    attacks' metrics and ``passes``.
    """
    # A trial MLflow holds as FINISHED, restored by Ray as unfinished or lost by Ray altogether
    # (the driver died between the two): its last result again, not another training. Training
    # is seeded, so the same configuration would train to the same result.
    done = recorded.lookup(session.trial_id(), trial_config(assets.base, params)) if recorded else None
    if done is not None:
        session.report(done)
        return
    work = Path(tempfile.mkdtemp(prefix="smoothblock-trial-"))
    try:
        cfg = trial_config(assets.base, params).replace(out_dir=str(work))
        device = resolve_device(cfg.device)
        resume = session.restore_file("last.pt", work)
        settings = search.attack_settings()

        def report(epoch: int, metrics: dict[str, float], model: nn.Module) -> None:
            defended = wrap_for_inference(model, cfg).eval()
            # The transfer examples are crafted on this epoch's weights with the defense off.
            scores = evaluate(defended, assets.splits.val, attacks=search.attacks, cascade=True,
                              images=search.val_images, settings=settings, seed=search.search_seed, device=device,
                              num_classes=cfg.num_classes, progress=False)
            model.train()
            torch.set_grad_enabled(True)
            row = {k: v for k, v in metrics.items() if k != "val_acc"}  # clean_acc replaces it
            row.update(scores, passes=cfg.passes)
            row[SCHEDULER_METRIC] = asha_score(row)
            session.report(row, folder=work)

        train(cfg, resume=resume, splits=assets.splits, on_epoch_end=report, progress=False,
              init_state=assets.state_dict)
    finally:
        shutil.rmtree(work, ignore_errors=True)
