"""Post-hoc trial (thesis Section 4.2): put the trial's defense into a trained model and score it.

The score is ``robust_acc``, the per-image worst case over the search's attacks, on the first
``val_images`` validation images. They are scored in chunks of ``chunk_images`` and the running
figure is reported after each, so a scheduler (ASHA) can stop a clearly worse defense before it
has seen them all: multi-fidelity over images.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import torch

from smoothblock import Config
from smoothblock.attacks import ATTACKS
from smoothblock.data import to_float
from smoothblock.evaluation import changes_output, evaluate
from smoothblock.defended import Autocast
from smoothblock.hub import model_from_state
from smoothblock.device import resolve_device

from .baseline import Baseline, baseline_key, gains, load_cached, store_cached
from . import session
from .assets import Assets
from .memory import release_memory
from .params import trial_config
from .recorded import Recorded
from .scoring import SCHEDULER_METRIC, Scoring, asha_score, attack_batch

#: Metrics that are counts, not fractions: summed over chunks, not averaged (an attack's limit
#: is reported under the name of its AttackSettings field).
COUNTS = ("images", "robust_images", *sorted({a.limit for a in ATTACKS.values() if a.limit}))


def score_chunks(cfg: Config, search: Scoring, assets: Assets,
                 outcomes: dict[str, torch.Tensor] | None = None) -> Iterator[dict[str, float]]:
    """``cfg``'s defense in the assets' trained model, scored chunk by chunk on the first
    ``val_images`` validation images; yields the running metrics after each chunk: ``clean_acc``,
    ``robust_acc``, each attack's ``<name>_acc`` or ``<name>_broke``, ``images`` (so far), ``passes``
    and, where the assets hold the base's figures, the gain over it with its intervals
    (:func:`trainables.baseline.gains`) and ``identity`` (1.0 when the defense changes no output of
    the undefended model on the first chunk's clean images: a no-op, however it scores). ``outcomes``: filled with the per-image ``clean`` and
    ``robust`` outcomes so far, as :func:`smoothblock.evaluation.evaluate` gives them."""
    device = resolve_device(cfg.device)
    torch.set_grad_enabled(True)
    model = model_from_state(cfg, assets.state_dict, device=device, source=str(search.model))
    val = assets.splits.val
    total = min(search.val_images, len(val))
    identity = {}
    if assets.baseline is not None:  # compared in float32, before the attacks' bfloat16 autocast
        base = model_from_state(assets.base.replace(method="none"), assets.state_dict, device=device,
                                source=str(search.model))
        first = to_float(val.images[:min(total, search.chunk_images)], device)
        identity = {"identity": float(not changes_output(model, base, first, seed=search.search_seed))}
    if search.attack_bf16:
        model = Autocast(model, device.type)
    sums: dict[str, float] = {}
    per_image: dict[str, list[torch.Tensor]] = {"clean": [], "robust": []}
    for chunk, start in enumerate(range(0, total, search.chunk_images)):
        stop = min(total, start + search.chunk_images)
        chunk_outcomes: dict[str, torch.Tensor] = {}
        # Each chunk is seeded on its own, so a chunk's figures do not depend on the chunks before.
        metrics = evaluate(model, val.take(slice(start, stop)), attacks=search.attacks,
                           settings=search.attack_settings(), seed=search.search_seed + chunk, device=device,
                           batch_size=attack_batch(cfg, search.attack_rows, device),
                           num_classes=cfg.num_classes, progress=False, cascade=True,
                           precomputed=assets.precomputed(start, stop), outcomes=chunk_outcomes)
        for key in per_image:
            per_image[key].append(chunk_outcomes[key])
        so_far = {k: torch.cat(v) for k, v in per_image.items()}
        if outcomes is not None:
            outcomes.update(so_far)
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + (value if key in COUNTS else value * metrics["images"])
        running = {k: (v if k in COUNTS else v / sums["images"]) for k, v in sums.items()}
        running["passes"] = cfg.passes
        running[SCHEDULER_METRIC] = asha_score(running)
        running.update(gains(so_far["clean"], so_far["robust"], assets.baseline))
        running.update(identity)
        yield running


def score(cfg: Config, search: Scoring, assets: Assets,
          outcomes: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """The final metrics of :func:`score_chunks` (all ``val_images`` images)."""
    for metrics in score_chunks(cfg, search, assets, outcomes):
        pass
    return metrics


def undefended_key(search: Scoring, assets: Assets, device: torch.device) -> str:
    """The cache key of the base's figures when scored on a ``device`` of that type."""
    scoring = {"attacks": list(search.attacks), "settings": search.attack_settings().to_dict(),
               "seed": search.search_seed, "val_images": search.val_images, "chunk_images": search.chunk_images,
               "rows": attack_batch(assets.base.replace(method="none"), search.attack_rows, device),
               "bf16": search.attack_bf16}
    val = assets.splits.val.take(slice(0, min(search.val_images, len(assets.splits.val))))
    return baseline_key(assets.state_dict, val, scoring, device.type)


def undefended_score(search: Scoring, assets: Assets, threads: int | None = None) -> Baseline:
    """The reference every trial is compared with: the same model, images, attacks and seeds, no
    defense; read from the cache folder when the same base was scored the same way before, else
    scored (with ``threads`` torch threads, when given) and kept there."""
    cfg = assets.base.replace(method="none")
    key = undefended_key(search, assets, resolve_device(cfg.device))  # hashes the weights and images: once
    cached = load_cached(key, cfg.cache_dir)
    if cached is not None:
        return cached
    outcomes: dict[str, torch.Tensor] = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        metrics = score(cfg, search, dataclasses.replace(assets, baseline=None), outcomes)
    finally:
        torch.set_num_threads(previous)  # the process may score a trial or an audit next
    baseline = Baseline({k: float(v) for k, v in metrics.items()}, outcomes["clean"], outcomes["robust"])
    store_cached(key, cfg.cache_dir, baseline)
    return baseline


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
    done = recorded.lookup(session.trial_id(), cfg) if recorded else None
    if done is not None:
        session.report(done)
        return
    try:
        for metrics in score_chunks(cfg, search, assets):
            session.report(metrics)
    finally:
        release_memory()
