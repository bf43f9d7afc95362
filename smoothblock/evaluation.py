"""Clean accuracy, each attack's accuracy and the per-image worst case, as flat metrics."""
from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from .attacks import (Attack, AttackSettings, Crafter, get_attack, metric_name, predict, random_targets,
                      worst_fgsm_metric)
from .data import TensorDataset, iterate_batches


def evaluate(model: nn.Module, dataset: TensorDataset, *, attacks: tuple[str, ...] = ("pgd",),
             images: int | None = None, batch_size: int = 256, settings: AttackSettings = AttackSettings(),
             seed: int = 0, device: str | torch.device = "cpu", num_classes: int = 10,
             progress: bool = True, cascade: bool = False,
             precomputed: dict[str, torch.Tensor] | None = None,
             outcomes: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Clean accuracy, the accuracy under each attack and ``robust_acc``, the per-image worst case.

    An image counts towards ``robust_acc`` only if it is classified correctly clean and after every
    attack (as AutoAttack reports), each scored by one fresh forward pass of ``model``.

    Args:
        model: the whole defended model (ensemble included), images in [0, 1] -> logits.
        dataset: uint8 images and labels.
        attacks: names from :data:`smoothblock.attacks.ATTACKS`, run in this order.
        images: number of images scored, the first of ``dataset`` (None: all); an attack with a ``limit`` (C&W, the EOT attacks, the
            unbounded check) runs on the first ``settings.<limit>`` of them only, and ``robust_acc``
            counts the images every attack ran on (``robust_images``).
        cascade: the worst case at a fraction of the cost (AutoAttack's way): an attack that is not
            ``cheap`` runs only on the images still robust after the attacks before it, and reports
            no accuracy of its own. Every attack reports ``<name>_broke``, the fraction of the images
            it broke that the attacks before it had left: which attack set the worst case.
            ``robust_acc`` is the same as without the cascade (up to the draws).
        precomputed: attack name -> adversarial images (images, C, H, W) in [0, 1], aligned with the first
            ``images`` images, used instead of crafting them (a search crafts the transfer examples once).
        seed: seeds the defense's draws, the attacks' random starts and the C&W targets, inside a
            forked RNG so the caller's random state is untouched.
        outcomes: a dict to fill with the per-image results that paired comparisons need (a defense
            and its base on the same images, :mod:`smoothblock.stats`): ``clean`` (images,) bool and
            ``robust`` (robust_images,) bool, on the CPU.

    Returns:
        ``{"clean_acc", "<attack>_acc" (per-eps attacks: "<attack>_<eps>_acc") or "<attack>_broke",
        "cw_asr", "robust_acc"}`` and, with per-eps attacks, ``worst_fgsm_<eps>_acc`` (correct clean
        and after every per-eps attack at that eps) as fractions, and the image counts ``images``, ``robust_images`` and, where an attack
        is limited, ``eot_images``, ``cw_images``, ``unbounded_images``.
    """
    entries = _entries(attacks, settings)
    precomputed = precomputed or {}
    subset = dataset.take(slice(0, images)) if images is not None else dataset
    for name, images in precomputed.items():
        if len(images) < len(subset):
            raise ValueError(f"precomputed {name} holds {len(images)} images, the evaluation needs {len(subset)}")
    limits = {e.name: (getattr(settings, e.limit) if e.limit else len(subset)) for e in entries}
    robust_limit = min([len(subset), *limits.values()])
    model = model.to(device).eval()
    run = _Run(model, precomputed, cascade, num_classes, torch.Generator().manual_seed(seed), device)
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        crafters = {e.name: e.build(model, settings, num_classes, seed) for e in entries}
        seen = 0
        batches = iterate_batches(subset, batch_size, device=device)
        total = -(-len(subset) // batch_size)
        for images, labels in tqdm(batches, total=total, desc="evaluate", disable=not progress, leave=False):
            run.batch(entries, crafters, images, labels, seen, limits, robust_limit, settings.fgsm_eps)
            seen += len(labels)
    if outcomes is not None:
        outcomes.update({k: torch.cat(v) if v else torch.zeros(0, dtype=torch.bool) for k, v in run.per_image.items()})
    return run.metrics(len(subset), entries, limits)


def _entries(attacks: tuple[str, ...], settings: AttackSettings) -> list[Attack]:
    entries = [get_attack(a) for a in attacks]
    for entry in entries:
        entry.check_norm(settings)
        if entry.per_eps and (entry.limit or not entry.cheap):
            raise ValueError("per-eps attacks must be cheap and unlimited")  # a registry invariant
    return entries


class _Tally:
    """Correct and counted images per metric, summed over batches."""

    def __init__(self) -> None:
        self.correct: dict[str, int] = {}
        self.counted: dict[str, int] = {}

    def count(self, name: str, hits: torch.Tensor) -> None:
        self.correct[name] = self.correct.get(name, 0) + int(hits.sum())
        self.counted[name] = self.counted.get(name, 0) + len(hits)

    def metrics(self) -> dict[str, float]:
        return {name: self.correct[name] / self.counted[name] for name in self.correct if self.counted[name]}


class _Run:
    """One evaluation's running state: the counts, the per-image outcomes, and how a batch and an
    attack on it are scored (by one fresh pass of the model each)."""

    def __init__(self, model: nn.Module, precomputed: dict[str, torch.Tensor], cascade: bool, num_classes: int,
                 target_gen: torch.Generator, device: str | torch.device) -> None:
        self.model, self.precomputed, self.cascade = model, precomputed, cascade
        self.num_classes, self.target_gen, self.device = num_classes, target_gen, device
        self.tally = _Tally()
        self.per_image: dict[str, list[torch.Tensor]] = {"clean": [], "robust": []}

    def metrics(self, images: int, entries: list[Attack], limits: dict[str, int]) -> dict[str, float]:
        """The fractions, and the image counts behind them (``images``, ``robust_images`` and each
        limited attack's)."""
        metrics = self.tally.metrics()
        metrics.update(images=images, robust_images=self.tally.counted.get("robust_acc", 0))
        metrics.update({e.limit: min(limits[e.name], images) for e in entries if e.limit})
        return metrics

    def batch(self, entries: list[Attack], crafters: dict[str, dict[str, Crafter]], images: torch.Tensor,
              labels: torch.Tensor, seen: int, limits: dict[str, int], robust_limit: int,
              fgsm_eps: tuple[float, ...]) -> None:
        """Score one batch, (N, C, H, W) and (N,), whose first image is image ``seen`` of the
        evaluation: clean, every attack within its limit, the per-image worst cases."""
        tally = self.tally
        clean = predict(self.model, images) == labels
        tally.count("clean_acc", clean)
        robust = clean.clone()
        # Per eps, the images every per-eps attack (FGSM, its transfer and EOT forms) left.
        eps_robust = {e: clean.clone() for e in fgsm_eps} if any(e.per_eps for e in entries) else {}
        for entry in entries:
            rows = torch.arange(len(labels), device=labels.device)[: max(0, limits[entry.name] - seen)]
            if len(rows):
                self.attack(entry, crafters[entry.name], images, labels, rows, seen, robust, eps_robust, tally)
        counted = robust[: max(0, robust_limit - seen)]
        tally.count("robust_acc", counted)
        self.per_image["clean"].append(clean.cpu())
        self.per_image["robust"].append(counted.cpu())
        for e, left in eps_robust.items():
            tally.count(worst_fgsm_metric(e), left)

    def attack(self, entry: Attack, crafters: dict[str, Crafter], images: torch.Tensor, labels: torch.Tensor,
               rows: torch.Tensor, seen: int, robust: torch.Tensor, eps_robust: dict[int, torch.Tensor],
               tally: _Tally) -> None:
        """Run ``entry`` on ``rows`` (0..k-1) of the batch (on those still robust, in a cascade,
        unless it is cheap); update ``robust`` (N,) and, per eps, ``eps_robust`` in place."""
        standalone = not self.cascade or entry.cheap
        run = rows if standalone else rows[robust[rows]]
        # rows is 0..k-1, so a row's index is its position in ``survived``.
        survived = torch.ones(len(rows), dtype=torch.bool, device=labels.device)
        eps_of = {metric_name(entry.name, eps=e): e for e in eps_robust} if entry.per_eps else {}
        for metric, craft in crafters.items():
            hits = torch.ones(len(run), dtype=torch.bool, device=labels.device)
            if len(run):
                hits = self._hits(entry, craft, images, labels, run, seen, standalone, tally)
            survived[run] &= hits
            if standalone:
                tally.count(metric, hits)
            if entry.per_eps:  # per_eps attacks are cheap and unlimited: run is every row
                eps_robust[eps_of[metric]] &= hits
        if self.cascade:
            tally.count(metric_name(entry.name, "broke"), robust[rows] & ~survived)
        robust[rows] &= survived

    def _hits(self, entry: Attack, craft: Crafter, images: torch.Tensor, labels: torch.Tensor, run: torch.Tensor,
              seen: int, standalone: bool, tally: _Tally) -> torch.Tensor:
        if entry.name in self.precomputed:
            adv = self.precomputed[entry.name][seen + run.cpu()].to(self.device)
        elif entry.targeted:
            targets = random_targets(labels[run], self.num_classes, self.target_gen).to(self.device)
            adv = craft(images[run], targets)
        else:
            adv = craft(images[run], labels[run])
        pred = predict(self.model, adv)
        if entry.targeted and standalone:  # on survivors only it would be another rate
            tally.count(metric_name(entry.name, "asr"), pred == targets)
        return pred == labels[run]


@torch.no_grad()
def changes_output(model: nn.Module, reference: nn.Module, images: torch.Tensor, *, draws: int = 4,
                   seed: int = 0) -> bool:
    """Whether ``model`` gives any output other than ``reference``'s on ``images``, (N, C, H, W)
    floats in [0, 1], in any of ``draws`` forward passes (each a fresh draw of its randomness).

    False means the defense is the identity on these images: SmoothBlock with ``mean="channel"``
    after the global pooling (position 5, a 1x1 map whose per-channel mean is the unit itself), or
    a keep probability that covers nothing. Outputs are compared within float tolerance (rtol
    1e-5, atol 1e-6), not bit for bit, because an ensemble's average of identical passes rounds.
    The draws are seeded with ``seed`` inside a forked RNG: the answer is the same on every run (a
    rarely-covering defense on few images could otherwise flip it) and the caller's random state
    is untouched.
    """
    with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
        torch.manual_seed(seed)
        expected = reference(images)
        return any(not torch.allclose(model(images), expected, rtol=1e-5, atol=1e-6) for _ in range(draws))
