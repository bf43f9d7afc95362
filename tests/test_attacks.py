"""Attacks on a small model whose answers are known: a nearest-centroid classifier of brightness."""
import pytest
import torch
from torch import nn

from smoothblock import SelfEnsemble, SmoothBlock
from smoothblock.attacks import AttackSettings, _PerSampleCW, attack_batch, cw_l2_targeted, metric_names
from smoothblock.data import TensorDataset
from smoothblock.evaluation import evaluate


class Brightness(nn.Module):
    """Class k has mean brightness 0.3 + 0.04 k; logits are minus the squared distance (scaled).

    Classes are 0.04 apart, so an L-inf perturbation of 0.02 or more can flip any image and one of
    8/255 ~ 0.031 flips every one, while eps 1/255 flips none.
    """

    def __init__(self, defense: nn.Module | None = None) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2000.0))
        self.register_buffer("centres", 0.3 + 0.04 * torch.arange(10.0))
        self.defense = defense or nn.Identity()

    def forward(self, x):
        m = self.defense(x).mean(dim=(1, 2, 3))
        return -self.scale * (m[:, None] - self.centres) ** 2


def _data(n=40):
    labels = torch.arange(n) % 10
    images = (0.3 + 0.04 * labels.float()).view(-1, 1, 1, 1).expand(n, 3, 8, 8)
    return TensorDataset((images * 255).round().to(torch.uint8), labels)


def test_fgsm_and_pgd_stay_in_the_ball_and_break_an_undefended_model():
    data = _data()
    x, y = data.images.float() / 255, data.labels
    model = Brightness()
    for name, eps in (("fgsm", 8 / 255), ("pgd", 8 / 255)):
        adv = attack_batch(name, model, x, y, AttackSettings(), eps=eps)
        assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    metrics = evaluate(model, data, attacks=("fgsm", "pgd"), progress=False)
    assert metrics["clean_acc"] == 1.0
    assert metrics["fgsm_1_acc"] == 1.0  # 1/255 is too small to cross half the 0.04 gap
    assert metrics["fgsm_16_acc"] == 0.0 and metrics["pgd_acc"] == 0.0
    assert set(metric_names(("fgsm", "pgd"))) <= set(metrics)


def test_cw_binary_search_reaches_the_targets_with_small_l2():
    data = _data(20)
    x, y = data.images.float() / 255, data.labels
    targets = (y + 1) % 10
    adv = cw_l2_targeted(Brightness(), x, targets, AttackSettings(cw_steps=30, cw_lr=0.05))
    pred = Brightness()(adv).argmax(1)
    assert (pred == targets).float().mean() >= 0.9
    # Moving the mean by one class (0.04) costs about 0.04^2 * 192 ~ 0.3 in squared L2.
    assert (adv - x).flatten(1).pow(2).sum(1).median() < 1.0


def test_per_sample_c_weights_each_sample_and_f_is_carlini_wagner_exact():
    model = Brightness()
    c = torch.tensor([1.0, 10.0])
    attack = _PerSampleCW(model, c)
    attack.targeted = True  # f's sign as in a targeted attack
    logits = torch.tensor([[-5.0, -1.0, -3.0], [-2.0, -4.0, -7.0]])
    labels = torch.tensor([0, 2])
    # f = max_{i != t} Z_i - Z_t, clamped at -kappa; all logits are negative on purpose.
    assert torch.allclose(attack.f(logits, labels), torch.tensor([1.0 * 4.0, 10.0 * 5.0]))


def test_evaluate_is_reproducible_and_runs_every_attack_on_a_randomised_ensemble():
    data = _data(20)
    model = SelfEnsemble(Brightness(SmoothBlock(3, 0.7)), 4)
    settings = AttackSettings(eot_iter=2, pgd_steps=2, cw_search_steps=2, cw_steps=3, cw_n=10, eot_n=7)
    a = evaluate(model, data, attacks=("fgsm", "pgd", "eot_pgd", "cw"), settings=settings, seed=3, progress=False)
    b = evaluate(model, data, attacks=("fgsm", "pgd", "eot_pgd", "cw"), settings=settings, seed=3, progress=False)
    assert a == b
    assert a["cw_n"] == 10 and a["eot_n"] == 7 and a["n"] == 20
    assert round(a["eot_pgd_acc"] * 7) == a["eot_pgd_acc"] * 7  # a fraction of the 7 images
    for name in metric_names(("fgsm", "pgd", "eot_pgd", "cw")):
        assert 0.0 <= a[name] <= 1.0


def test_unknown_attack():
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate(Brightness(), _data(), attacks=("deepfool",), progress=False)
