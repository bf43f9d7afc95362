"""Knowledge distillation: learning from teachers' softened predictions.

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", Section 2: the
student matches the teachers' class probabilities at temperature T, q_i = exp(z_i/T) / sum_j
exp(z_j/T), with the term scaled by T^2 so that its gradients keep their size as T changes.
Several teachers are one teacher whose probabilities are their average (an ensemble).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .hub import load_model


@torch.no_grad()
def teacher_probs(teachers: Sequence[nn.Module], images: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teachers' averaged softened probabilities: images (N, C, H, W) -> (N, K), float32."""
    probs = [F.softmax(teacher(images).float() / temperature, dim=1) for teacher in teachers]
    return torch.stack(probs).mean(0)


def distillation_loss(logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(target || softmax(logits / T)), averaged over the batch (Hinton et al. 2015).

    Args:
        logits: the student's logits (N, K).
        target_probs: the teachers' probabilities at the same temperature (N, K).
        temperature: T > 0.
    """
    log_probs = F.log_softmax(logits.float() / temperature, dim=1)
    return F.kl_div(log_probs, target_probs, reduction="batchmean") * temperature ** 2


def load_teachers(names: Sequence[str], num_classes: int, device: torch.device) -> list[nn.Module]:
    """The teacher models (eval mode, channels_last, frozen) from shipped names or checkpoint paths."""
    teachers = []
    for name in names:
        teacher = load_model(name, device=device).to(memory_format=torch.channels_last)
        if teacher.smoothblock_config.num_classes != num_classes:
            raise ConfigError(f"teacher {name} has {teacher.smoothblock_config.num_classes} classes, "
                              f"the model {num_classes}")
        teacher.requires_grad_(False)
        teachers.append(teacher)
    return teachers
