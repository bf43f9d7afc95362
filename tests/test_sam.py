import pytest
import torch
from torch import nn

from smoothblock import Config, ConfigError
from smoothblock import sam
from smoothblock.train import train


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


def _loss(net, x, y):
    return nn.functional.cross_entropy(net(x), y)


def test_ascend_moves_the_weights_rho_along_the_normalised_gradient_and_descend_back_restores_them():
    net = _net()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    _loss(net, x, y).backward()
    params = list(net.parameters())
    before = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    steps = sam.ascend(params, 0.05)
    moved = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(params, before)))
    assert moved.item() == pytest.approx(0.05, rel=1e-4)
    for p, b, g in zip(params, before, grads):
        torch.testing.assert_close(p - b, 0.05 * g / norm)
    sam.descend_back(steps)
    for p, b in zip(params, before):
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=1e-7)


def test_a_sam_step_applies_the_gradient_taken_at_the_perturbed_weights():
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    net = _net()
    _loss(net, x, y).backward()
    steps = sam.ascend(list(net.parameters()), 0.1)
    net.zero_grad()
    with sam.frozen_batch_norm_stats(net):
        _loss(net, x, y).backward()
    sam.descend_back(steps)
    got = [p.grad.clone() for p in net.parameters()]

    # The same gradient computed by hand on a copy placed at w + rho g / ||g||.
    reference = _net()
    _loss(reference, x, y).backward()
    g = [p.grad.clone() for p in reference.parameters()]
    norm = torch.sqrt(sum((t ** 2).sum() for t in g))
    with torch.no_grad():
        for p, t in zip(reference.parameters(), g):
            p.add_(0.1 * t / norm)
    reference.zero_grad()
    _loss(reference, x, y).backward()
    for a, b in zip(got, reference.parameters()):
        torch.testing.assert_close(a, b.grad)
    # ... and the gradient differs from the plain one, or the test would prove nothing.
    assert any(not torch.allclose(a, t) for a, t in zip(got, g))


def test_frozen_batch_norm_stats_normalise_with_the_batch_but_keep_the_running_statistics():
    net = _net().train()
    x = torch.randn(8, 3, 8, 8) * 3 + 1
    bn = net[1]
    net(x)  # one ordinary pass: the running statistics move
    mean, var, tracked = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    plain = net(x)
    with sam.frozen_batch_norm_stats(net):
        frozen = net(x)
    torch.testing.assert_close(frozen, plain)  # batch statistics, as in an ordinary training pass
    # Only the ordinary pass above moved the running statistics, not the frozen one.
    net2 = _net().train()
    net2(x)
    net2(x)
    torch.testing.assert_close(bn.running_mean, net2[1].running_mean)
    torch.testing.assert_close(bn.running_var, net2[1].running_var)
    assert bn.num_batches_tracked.item() == tracked.item() + 1
    assert not torch.equal(bn.running_mean, mean) and bn.momentum == 0.1
    assert not torch.equal(bn.running_var, var)


def test_sam_training_differs_from_plain_sgd_and_resumes_exactly(tiny_config, tmp_path):
    cfg = tiny_config.replace(method="none", sam_rho=0.05, epochs=2)
    whole = train(cfg.replace(out_dir=str(tmp_path / "whole")), progress=False)
    plain = train(cfg.replace(sam_rho=0.0, out_dir=str(tmp_path / "plain")), progress=False)
    assert whole.history[1]["train_loss"] != plain.history[1]["train_loss"]

    def stop_after_first_epoch(epoch, metrics, model):
        raise KeyboardInterrupt

    resumable = cfg.replace(out_dir=str(tmp_path / "resumed"))
    with pytest.raises(KeyboardInterrupt):
        train(resumable, on_epoch_end=stop_after_first_epoch, progress=False)
    resumed = train(resumable, resume=True, progress=False)
    for key, value in whole.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[key], atol=1e-5), key


def test_a_negative_rho_is_refused():
    with pytest.raises(ConfigError, match="sam_rho must be >= 0"):
        Config(sam_rho=-0.1)


def test_with_adversarial_training_both_passes_use_the_examples_made_once(tiny_config, tmp_path, monkeypatch):
    import smoothblock.train as training

    made = []
    real = training._adversarial

    def counting(model, images, labels, cfg):
        made.append(len(images))
        return real(model, images, labels, cfg)

    monkeypatch.setattr(training, "_adversarial", counting)
    cfg = tiny_config.replace(method="none", epochs=1, adv_training="fgsm")
    train(cfg.replace(out_dir=str(tmp_path / "sgd")), progress=False)
    plain = list(made)
    made.clear()
    result = train(cfg.replace(sam_rho=0.05, out_dir=str(tmp_path / "sam")), progress=False)
    assert plain and made == plain  # one attack a step, as without SAM
    assert 0 < result.history[0]["train_loss"] < 10
