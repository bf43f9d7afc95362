"""Attacks through torchattacks, always against the whole defended model (ensemble included).

* FGSM (Goodfellow et al. 2015) at eps in {1, 2, 4, 8, 16, 32}/255.
* PGD (Madry et al. 2018): L-inf, eps 8/255, alpha 2/255, 7 steps, random start.
* EOT-PGD (Athalye et al. 2018): PGD whose gradient is averaged over ``eot_iter`` draws of the
  defense's randomness: the honest attack on a randomised model.
* C&W L2 (Carlini & Wagner 2017), targeted, with a per-sample binary search over c. The thesis
  used ART 0.4's defaults (10 binary-search steps, 10 iterations, lr 0.01, initial c 0.01,
  confidence 0), reproduced here. torchattacks' CW takes one c for the whole batch, so the search
  is driven per sample by weighting each sample's term of the loss with its own c.

Robust accuracy is the accuracy of one fresh forward pass of the defended model on the
adversarial images. All metrics are fractions in [0, 1].
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import torch
import torchattacks
from torch import nn

ATTACKS = ("fgsm", "pgd", "eot_pgd", "cw")
FGSM_EPS = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class AttackSettings:
    """Parameters of every attack; the defaults are the thesis' (Section 4, thesis-tables.md)."""

    fgsm_eps: tuple[int, ...] = FGSM_EPS  # in units of 1/255
    pgd_eps: float = 8 / 255
    pgd_alpha: float = 2 / 255
    pgd_steps: int = 7
    eot_iter: int = 10
    cw_search_steps: int = 10
    cw_steps: int = 10
    cw_lr: float = 0.01
    cw_initial_c: float = 0.01
    cw_kappa: float = 0.0
    cw_n: int = 1000  # C&W runs on the first cw_n images only, as in the thesis
    # EOT-PGD costs eot_iter x pgd_steps gradient passes per image (70 by default), so it too
    # runs on the first eot_n images only.
    eot_n: int = 1000


def metric_names(attacks: tuple[str, ...], settings: AttackSettings = AttackSettings()) -> list[str]:
    """Flat metric names that :func:`evaluate` reports for ``attacks``."""
    names = ["clean_acc"]
    for attack in attacks:
        if attack == "fgsm":
            names += [f"fgsm_{e}_acc" for e in settings.fgsm_eps]
        elif attack == "cw":
            names += ["cw_acc", "cw_asr"]
        else:
            names.append(f"{attack}_acc")
    return names


class _PerSampleCW(torchattacks.CW):
    """torchattacks' CW with a per-sample c and the target masked out of the "other" maximum.

    torchattacks computes max_{i != t} Z_i as max((1 - onehot) * Z), which returns 0 instead of
    the true maximum when all other logits are negative (always so for an ensemble's
    log-probabilities); the mask below gives Carlini & Wagner's f exactly.

    ``forward`` is torchattacks 3.5's loop (Adam on w in tanh space, the smallest-L2 success
    kept, early stop when the cost stops falling). It is restated here because torchattacks
    3.3, which pip picks next to MLflow, keeps the smallest-L2 *misclassified* image in targeted
    mode rather than the smallest one classified as the target.
    """

    def __init__(self, model: nn.Module, c: torch.Tensor, **kwargs) -> None:
        super().__init__(model, c=1.0, **kwargs)
        self.c_per_sample = c

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        goal = self.get_target_label(images, labels) if self.targeted else labels
        w = self.inverse_tanh_space(images).detach().requires_grad_(True)
        best_adv = images.clone()
        best_l2 = torch.full((len(images),), 1e10, device=images.device)
        prev_cost = float("inf")
        optimizer = torch.optim.Adam([w], lr=self.lr)
        for step in range(self.steps):
            adv = self.tanh_space(w)
            l2 = (adv - images).flatten(1).pow(2).sum(1)
            outputs = self.get_logits(adv)
            cost = l2.sum() + self.f(outputs, goal).sum()
            optimizer.zero_grad()
            cost.backward()
            optimizer.step()
            pred = outputs.detach().argmax(1)
            success = pred == goal if self.targeted else pred != labels
            better = success & (l2.detach() < best_l2)
            best_l2 = torch.where(better, l2.detach(), best_l2)
            best_adv = torch.where(better.view(-1, *[1] * (images.dim() - 1)), adv.detach(), best_adv)
            if step % max(self.steps // 10, 1) == 0:
                if cost.item() > prev_cost:
                    break
                prev_cost = cost.item()
        return best_adv

    def f(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = nn.functional.one_hot(labels, outputs.shape[1]).bool()
        other = outputs.masked_fill(target, float("-inf")).amax(dim=1)
        real = outputs.gather(1, labels[:, None]).squeeze(1)
        diff = other - real if self.targeted else real - other
        return self.c_per_sample * torch.clamp(diff, min=-self.kappa)


def _targeted(attack: torchattacks.Attack, targets: torch.Tensor) -> torchattacks.Attack:
    with contextlib.redirect_stdout(io.StringIO()):  # torchattacks prints the mode change
        attack.set_mode_targeted_by_function(lambda images, labels: targets)
    return attack


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Labels from one forward pass of ``model``; (N, C, H, W) -> (N,)."""
    return model(images).argmax(dim=1)


def cw_l2_targeted(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                   settings: AttackSettings = AttackSettings()) -> torch.Tensor:
    """Targeted C&W L2 with a binary search over c for every sample.

    Args:
        model: the defended model, images in [0, 1] -> logits.
        images: (N, C, H, W) in [0, 1].
        targets: (N,) target classes.

    Returns:
        Adversarial images (N, C, H, W): for each sample the smallest-L2 image that was classified
        as its target during the search, or the original image where none was (as ART returns).
    """
    n = len(images)
    device = images.device
    c = torch.full((n,), settings.cw_initial_c, device=device)
    lower = torch.zeros(n, device=device)
    upper = torch.full((n,), 1e10, device=device)
    best = images.clone()
    best_l2 = torch.full((n,), float("inf"), device=device)
    for _ in range(settings.cw_search_steps):
        attack = _targeted(_PerSampleCW(model, c, kappa=settings.cw_kappa, steps=settings.cw_steps,
                                        lr=settings.cw_lr), targets)
        adv = attack(images, targets)
        l2 = (adv - images).flatten(1).pow(2).sum(1)
        success = (predict(model, adv) == targets) & (l2 > 0)
        improved = success & (l2 < best_l2)
        best[improved] = adv[improved]
        best_l2 = torch.where(improved, l2, best_l2)
        # Carlini & Wagner's schedule: halve the bracket on success, else raise c (x10 while unbounded).
        upper = torch.where(success, torch.minimum(upper, c), upper)
        lower = torch.where(success, lower, torch.maximum(lower, c))
        bounded = upper < 1e9
        c = torch.where(bounded, (lower + upper) / 2, c * 10)
    return best


def _random_targets(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels.cpu() + shift) % num_classes


def attack_batch(name: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 settings: AttackSettings, *, targets: torch.Tensor | None = None,
                 eps: float | None = None) -> torch.Tensor:
    """Adversarial images for one batch; ``name`` in fgsm, pgd, eot_pgd, cw."""
    if name == "fgsm":
        return torchattacks.FGSM(model, eps=eps)(images, labels)
    if name == "pgd":
        return torchattacks.PGD(model, eps=settings.pgd_eps, alpha=settings.pgd_alpha,
                                steps=settings.pgd_steps, random_start=True)(images, labels)
    if name == "eot_pgd":
        return torchattacks.EOTPGD(model, eps=settings.pgd_eps, alpha=settings.pgd_alpha,
                                   steps=settings.pgd_steps, eot_iter=settings.eot_iter,
                                   random_start=True)(images, labels)
    if name == "cw":
        return cw_l2_targeted(model, images, targets, settings)
    raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
