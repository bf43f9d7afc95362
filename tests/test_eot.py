"""Batched EOT (smoothblock.attacks.eot): one draw where nothing is random, the loop's gradient otherwise."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smoothblock import Config
from smoothblock.attacks import AttackSettings, get_attack
from smoothblock.defended import build_model
from smoothblock.ensemble import SelfEnsemble
from smoothblock.attacks.eot import draw_logits, eot_gradient, eot_pgd, is_random


def _model(position: int = 3, method: str = "smoothblock", keep_prob: float = 0.7) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = Config(method=method, positions=[position], block_size=2, keep_prob=keep_prob, device="cpu")
    return build_model(cfg).eval()


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _rows(model: torch.nn.Module) -> list[int]:
    """The batch size of every forward of ``model``'s first stage, from now on."""
    seen: list[int] = []
    next(iter(model.stages.values())).register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    return seen


def test_a_deterministic_model_gets_one_draw_from_every_eot_attack():
    model = _model(method="none")
    assert not is_random(model)
    x, y = _batch()
    rows = _rows(model)
    eot_pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=3, draws=32)
    assert rows == [6, 6, 6]  # one pass of six images per step, not 32
    rows.clear()
    settings = AttackSettings(eot_iter=8, apgd_steps=3, aa_steps=2, aa_eot_iter=8)
    get_attack("apgd").build(model, settings, 10, 0)["apgd_acc"](x, y)
    assert rows == [6] * 4  # the start and three steps, one pass each
    random = _model()
    head: list[int] = []
    random.stages["head"].register_forward_hook(lambda m, args, out: head.append(args[0].shape[0]))
    get_attack("apgd").build(random, settings, 10, 0)["apgd_acc"](x, y)
    assert head == [8 * 6] * 4  # a random model: eight draws of the six images behind the prefix


def test_a_random_model_draws_every_draw_with_its_prefix_run_once():
    model = _model(position=3)
    assert is_random(model)
    x, y = _batch()
    rows = _rows(model)
    eot_gradient(model, x, y, draws=16)
    assert rows == [6]  # the stem before position 3 ran once, on the six images
    rows.clear()
    head: list[int] = []
    model.stages["head"].register_forward_hook(lambda m, args, out: head.append(args[0].shape[0]))
    eot_gradient(model, x, y, draws=16, max_rows=6 * 4)
    assert rows == [6] and head == [24, 24, 24, 24]  # the prefix once; four chunks of four draws after it


def test_the_batched_gradient_is_the_loops():
    model = _model(position=2)
    x, y = _batch()
    torch.manual_seed(5)
    loop = torch.zeros_like(x)
    for _ in range(8):
        xi = x.clone().requires_grad_(True)
        loop += torch.autograd.grad(F.cross_entropy(model(xi), y), xi)[0]
    torch.manual_seed(5)
    batched = eot_gradient(model, x, y, draws=8)
    assert loop.abs().sum() > 0
    torch.testing.assert_close(batched, loop, rtol=1e-4, atol=1e-6)


def test_draws_of_a_self_ensemble_are_its_outputs():
    model = _model(position=1)
    ensemble = SelfEnsemble(model, 3)
    x, _ = _batch(4)
    out = draw_logits(ensemble, x, draws=5)
    assert out.shape == (5, 4, 10)
    assert torch.allclose(out.exp().sum(-1), torch.ones(5, 4), atol=1e-5)  # log-probabilities
    off = SelfEnsemble(_model(position=1, keep_prob=1.0), 3)
    torch.testing.assert_close(draw_logits(off, x, draws=2)[1], off(x))


@pytest.mark.parametrize("position", [1, 5])
def test_eot_pgd_stays_in_the_ball_and_lowers_accuracy_as_torchattacks_does(position):
    import torchattacks

    model = _model(position=position)
    x, y = _batch(8)
    adv = eot_pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=5, draws=4)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    reference = torchattacks.EOTPGD(model, eps=8 / 255, alpha=2 / 255, steps=5, eot_iter=4)(x, y)
    with torch.no_grad():
        ours, theirs = (F.cross_entropy(model(a), y).item() for a in (adv, reference))
        clean = F.cross_entropy(model(x), y).item()
    assert ours > clean and theirs > clean
