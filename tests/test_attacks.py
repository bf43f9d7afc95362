"""Attacks on a small model whose answers are known: a nearest-centroid classifier of brightness."""
import pytest
import torch
from torch import nn

from smoothblock import SelfEnsemble, SmoothBlock
from smoothblock.attacks import ATTACKS, AttackSettings, defense_off, get_attack, metric_names
from smoothblock.attacks.cw import _PerSampleCW, cw_l2_targeted
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


def test_every_registered_attack_stays_in_its_ball_and_breaks_an_undefended_model():
    data = _data(20)
    x, y = data.images.float() / 255, data.labels
    model = Brightness()
    settings = AttackSettings(fgsm_eps=(8,), eot_iter=2, eot_steps=5, apgd_steps=5, square_queries=200,
                              cw_search_steps=2, cw_steps=30, cw_lr=0.05)
    for name, attack in ATTACKS.items():
        assert attack.cost(settings) >= 1 and attack.summary
        for metric, craft in attack.build(model, settings, 10, 0).items():
            adv = craft(x, (y + 1) % 10 if attack.targeted else y)
            eps = 1.0 if name in ("unbounded", "cw") else settings.radius
            assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1, name
            # Square's random stripes move the mean slowly: within its queries it breaks some only.
            assert (model(adv).argmax(1) == y).float().mean() <= (0.9 if name == "square" else 0.1), name
    metrics = evaluate(model, _data(), attacks=("fgsm", "pgd"), progress=False)
    assert metrics["clean_acc"] == 1.0
    assert metrics["fgsm_1_acc"] == 1.0  # 1/255 is too small to cross half the 0.04 gap
    assert metrics["fgsm_16_acc"] == 0.0 and metrics["pgd_acc"] == 0.0
    assert set(metric_names(("fgsm", "pgd"))) <= set(metrics)
    assert metrics["robust_acc"] == 0.0


def test_under_l2_every_radius_attack_stays_in_the_l2_ball_and_fgsm_is_refused():
    data = _data(20)
    x, y = data.images.float() / 255, data.labels
    model = Brightness()
    settings = AttackSettings(norm="l2", eps=0.5, eot_iter=2, eot_steps=5, apgd_steps=5, aa_steps=5,
                              aa_eot_iter=1, square_queries=200)
    assert settings.radius == 0.5 and settings.step == 0.125 and settings.threat_model == "L2 0.5"
    radius_attacks = [n for n, a in ATTACKS.items() if "l2" in a.norms and n not in ("unbounded", "cw")]
    assert set(radius_attacks) == {"pgd", "transfer", "eot_pgd", "apgd", "autoattack_rand", "square", "eot_pgd_x2"}
    for name in radius_attacks:
        for metric, craft in ATTACKS[name].build(model, settings, 10, 0).items():
            adv = craft(x, y)
            norms = (adv - x).flatten(1).norm(dim=1)
            assert norms.max() <= 0.5 + 1e-5 and adv.min() >= 0 and adv.max() <= 1, (name, norms.max())
            # Moving the mean by half the 0.04 gap takes an L2 of 0.28 on 8x8x3 images: within 0.5. Square's
            # L2 squares are local and move the mean too little in 200 queries: only its ball is checked.
            if name != "square":
                assert (model(adv).argmax(1) == y).float().mean() <= 0.1, name
    metrics = evaluate(model, data, attacks=("pgd", "eot_pgd"), settings=settings, progress=False)
    assert metrics["robust_acc"] == 0.0
    for name in ("fgsm", "transfer_fgsm", "eot_fgsm"):
        with pytest.raises(ValueError, match=f"attack {name} has no l2 form"):
            evaluate(model, data, attacks=("pgd", name), settings=settings, progress=False)


def test_robust_acc_is_the_per_image_worst_case_not_the_lowest_figure():
    data = _data(20)
    x = data.images.float() / 255
    # Two attacks that each break a different half-overlapping set: 0-9 and 5-14.
    shift = torch.where(data.labels < 9, 0.04, -0.04).view(-1, 1, 1, 1)  # one class over
    first, second = torch.zeros_like(shift), torch.zeros_like(shift)
    first[0:10], second[5:15] = shift[0:10], shift[5:15]
    metrics = evaluate(Brightness(), data, attacks=("transfer", "square"), progress=False,
                       precomputed={"transfer": (x + first).clamp(0, 1), "square": (x + second).clamp(0, 1)})
    assert metrics["transfer_acc"] == metrics["square_acc"] == 0.5
    assert metrics["robust_acc"] == 0.25 and metrics["robust_images"] == 20  # images 15-19 survive both
    cascade = evaluate(Brightness(), data, attacks=("transfer", "square"), progress=False, cascade=True,
                       precomputed={"transfer": (x + first).clamp(0, 1), "square": (x + second).clamp(0, 1)})
    # Square runs on the survivors only: it reports what it broke beyond transfer (images 10-14).
    assert cascade["robust_acc"] == 0.25 and cascade["square_broke"] == 0.25 and "square_acc" not in cascade


def test_the_transfer_attack_crafts_with_the_defense_off_and_scores_with_it_on():
    model = SelfEnsemble(Brightness(SmoothBlock(3, 0.7)), 2)
    layer = model.model.defense
    with defense_off(model):
        assert not layer.active and not layer.active_in_eval
        x = torch.rand(2, 3, 8, 8)
        assert torch.allclose(model(x), torch.log_softmax(Brightness()(x), dim=1), atol=1e-4)  # deterministic
    assert layer.active_in_eval and layer.active_in_train
    seen = []
    original = layer.forward
    layer.forward = lambda h: seen.append(layer.active) or original(h)
    craft = get_attack("transfer").build(model, AttackSettings(transfer_steps=2), 10, 0)["transfer_acc"]
    data = _data(10)
    craft(data.images.float() / 255, data.labels)
    assert seen and not any(seen)  # every pass while crafting ran without the defense


def test_cw_binary_search_reaches_the_targets_with_small_l2():
    data = _data(20)
    x, y = data.images.float() / 255, data.labels
    targets = (y + 1) % 10
    adv = cw_l2_targeted(Brightness(), x, targets, steps=30, lr=0.05)
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
    settings = AttackSettings(eot_iter=2, pgd_steps=2, cw_search_steps=2, cw_steps=3, cw_images=10, eot_images=7)
    a = evaluate(model, data, attacks=("fgsm", "pgd", "eot_pgd", "cw"), settings=settings, seed=3, progress=False)
    b = evaluate(model, data, attacks=("fgsm", "pgd", "eot_pgd", "cw"), settings=settings, seed=3, progress=False)
    assert a == b
    assert a["cw_images"] == 10 and a["eot_images"] == 7 and a["images"] == 20 and a["robust_images"] == 7
    assert round(a["eot_pgd_acc"] * 7) == a["eot_pgd_acc"] * 7  # a fraction of the 7 images
    for name in metric_names(("fgsm", "pgd", "eot_pgd", "cw")):
        assert 0.0 <= a[name] <= 1.0


def test_unknown_attack():
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate(Brightness(), _data(), attacks=("deepfool",), progress=False)


def test_the_fgsm_curve_worst_case_is_per_image_and_per_eps():
    data = _data(40)
    attacks = ("fgsm", "transfer_fgsm", "eot_fgsm")
    settings = AttackSettings(fgsm_eps=(1, 16), eot_iter=2)
    # Undefended: switching the defense off changes nothing, so the transfer FGSM is the FGSM.
    plain = evaluate(Brightness(), data, attacks=attacks, settings=settings, progress=False)
    assert plain["transfer_fgsm_1_acc"] == plain["fgsm_1_acc"] == plain["worst_fgsm_1_acc"] == 1.0
    assert plain["worst_fgsm_16_acc"] == plain["eot_fgsm_16_acc"] == 0.0
    defended = evaluate(SelfEnsemble(Brightness(SmoothBlock(3, 0.7)), 2), data, attacks=attacks,
                        settings=settings, progress=False, seed=1)
    for e in (1, 16):
        assert defended[f"worst_fgsm_{e}_acc"] <= min(defended[f"{a}_{e}_acc"] for a in attacks)
    assert {"worst_fgsm_1_acc", "transfer_fgsm_16_acc", "eot_fgsm_1_acc"} <= set(metric_names(attacks)) | set(defended)


def test_apgd_attacks_return_their_best_iterate_not_the_clean_image():
    # At eps 1/255 no image of Brightness can be flipped, so torchattacks' APGD would hand back the
    # clean images; ours returns the perturbation of highest loss for every image.
    data = _data(10)
    x, y = data.images.float() / 255, data.labels
    settings = AttackSettings(eps=1, aa_steps=3, aa_eot_iter=1, apgd_steps=3, eot_iter=1)
    for name in ("apgd", "autoattack_rand"):
        adv = next(iter(get_attack(name).build(Brightness(), settings, 10, 0).values()))(x, y)
        moved = (adv - x).flatten(1).abs().amax(1)
        assert (moved > 0.5 / 255).all() and (moved <= 1 / 255 + 1e-6).all(), name


def test_fgsm_forms_share_one_gradient_per_batch_and_equal_fgsm_on_a_deterministic_model():
    import torchattacks

    data = _data(10)
    x, y = data.images.float() / 255, data.labels
    model = Brightness()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    settings = AttackSettings(fgsm_eps=(1, 8, 16), eot_iter=3)
    crafters = get_attack("eot_fgsm").build(model, settings, 10, 0)
    advs = {e: crafters[f"eot_fgsm_{e}_acc"](x, y) for e in (1, 8, 16)}
    assert len(calls) == 1  # a deterministic model: one draw, for the first eps, none for the others
    for e, adv in advs.items():
        assert torch.equal(adv, torchattacks.FGSM(model, eps=e / 255)(x, y)), e
