"""Clean and robust accuracy of a defended model on a dataset, as flat metrics."""
from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from .attacks import ATTACKS, AttackSettings, _random_targets, attack_batch, metric_names, predict
from .data import TensorDataset, iterate_batches


def evaluate(model: nn.Module, dataset: TensorDataset, *, attacks: tuple[str, ...] = ATTACKS,
             n: int | None = None, batch_size: int = 256, settings: AttackSettings = AttackSettings(),
             seed: int = 0, device: str | torch.device = "cpu", num_classes: int = 10,
             progress: bool = True) -> dict[str, float]:
    """Clean accuracy and the accuracy under each attack, on the first ``n`` images of ``dataset``.

    Args:
        model: the whole defended model (ensemble included), images in [0, 1] -> logits.
        dataset: uint8 images and labels.
        attacks: any of fgsm, pgd, eot_pgd, cw.
        n: number of images (None: all); C&W and EOT-PGD use the first ``settings.cw_n`` and
            ``settings.eot_n`` of them.
        seed: seeds the defense's draws, the attacks' random starts and the C&W targets, inside a
            forked RNG so the caller's random state is untouched.

    Returns:
        ``{"clean_acc": ..., "fgsm_8_acc": ..., "pgd_acc": ..., "eot_pgd_acc": ..., "cw_acc": ...,
        "cw_asr": ...}``, fractions in [0, 1] (see :func:`smoothblock.attacks.metric_names`), plus
        ``n``, ``cw_n`` and ``eot_n``, the numbers of images used.
    """
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack {unknown[0]!r}; choose from {', '.join(ATTACKS)}")
    subset = dataset.take(slice(0, n)) if n is not None else dataset
    model = model.to(device).eval()
    correct = {name: 0 for name in metric_names(tuple(attacks), settings)}
    counted = {name: 0 for name in correct}
    target_gen = torch.Generator().manual_seed(seed)
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        seen = 0
        batches = iterate_batches(subset, batch_size, device=device)
        total = -(-len(subset) // batch_size)
        for images, labels in tqdm(batches, total=total, desc="evaluate", disable=not progress, leave=False):
            _count(correct, counted, "clean_acc", predict(model, images) == labels)
            for attack in attacks:
                if attack == "fgsm":
                    for eps in settings.fgsm_eps:
                        adv = attack_batch("fgsm", model, images, labels, settings, eps=eps / 255)
                        _count(correct, counted, f"fgsm_{eps}_acc", predict(model, adv) == labels)
                elif attack in ("cw", "eot_pgd"):
                    limit = settings.cw_n if attack == "cw" else settings.eot_n
                    keep = max(0, min(len(labels), limit - seen))
                    if keep == 0:
                        continue
                    x, y = images[:keep], labels[:keep]
                    if attack == "cw":
                        targets = _random_targets(y, num_classes, target_gen).to(device)
                        pred = predict(model, attack_batch("cw", model, x, y, settings, targets=targets))
                        _count(correct, counted, "cw_acc", pred == y)
                        _count(correct, counted, "cw_asr", pred == targets)
                    else:
                        pred = predict(model, attack_batch("eot_pgd", model, x, y, settings))
                        _count(correct, counted, "eot_pgd_acc", pred == y)
                else:
                    adv = attack_batch(attack, model, images, labels, settings)
                    _count(correct, counted, f"{attack}_acc", predict(model, adv) == labels)
            seen += len(labels)
    metrics = {name: correct[name] / counted[name] for name in correct if counted[name]}
    metrics["n"] = len(subset)
    if "cw" in attacks:
        metrics["cw_n"] = counted["cw_acc"]
    if "eot_pgd" in attacks:
        metrics["eot_n"] = counted["eot_pgd_acc"]
    return metrics


def _count(correct: dict, counted: dict, name: str, hits: torch.Tensor) -> None:
    correct[name] += int(hits.sum())
    counted[name] += len(hits)
