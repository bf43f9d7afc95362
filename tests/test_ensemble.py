import pytest
import torch

from smoothblock import Config, SelfEnsemble, SmoothBlock, build_model


def test_prefix_runs_once_and_suffix_n_times():
    model = build_model(Config(positions=(4,))).eval()
    calls = {}
    for name in ("layer3", "head"):
        model.stages[name].register_forward_hook(lambda m, i, o, name=name: calls.setdefault(name, []).append(i[0].shape[0]))
    SelfEnsemble(model, 32)(torch.rand(5, 3, 32, 32))
    assert calls == {"layer3": [5], "head": [160]}


class _TinyStaged(torch.nn.Module):
    """A small model with the same staged layout as the CIFAR ResNets, cheap enough for 4000 passes."""

    def __init__(self):
        super().__init__()
        from smoothblock import MixedBlock
        self.stages = torch.nn.ModuleDict({
            "conv": torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()),
            "defense": MixedBlock(3, 0.5),
            "head": torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)),
        })

        with torch.no_grad():  # large logits, so the defense's draws visibly move the softmax
            self.stages["head"][-1].weight.mul_(40)

    def forward(self, x):
        for m in self.stages.values():
            x = m(x)
        return x


def test_prefix_reuse_has_the_distribution_of_n_full_passes():
    torch.manual_seed(0)
    model = _TinyStaged().eval()
    x = torch.rand(3, 3, 8, 8)
    n = 4000
    with torch.no_grad():
        batched = SelfEnsemble(model, n)(x).exp()
        separate = torch.stack([torch.softmax(model(x), 1) for _ in range(n)]).mean(0)
        single = torch.softmax(model(x), 1)
    # Both estimate E[softmax]; one pass alone is visibly further off than the tolerance.
    assert torch.allclose(batched, separate, atol=0.02)
    assert (single - separate).abs().max() > 0.05


def test_ensemble_of_a_deterministic_model_is_its_softmax():
    model = build_model(Config(method="none")).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(SelfEnsemble(model, 8)(x), torch.log_softmax(model(x), 1), atol=1e-6)


def test_chunks_give_the_same_result_and_gradients_flow():
    # keep_prob 1: the layer is active, so the ensemble runs all its passes (here in chunks of two
    # passes, max_rows 8 for 4 images), but it is the identity, so every pass is the plain network's.
    # Chunks that mixed images or dropped passes would move the result away from it.
    torch.manual_seed(0)
    model = build_model(Config(positions=(1,), keep_prob=0.5)).eval()
    layers = [m for m in model.modules() if isinstance(m, SmoothBlock)]
    for layer in layers:  # a configuration with keep_prob 1 has no layer at all: set it on the layer
        layer.keep_prob = 1.0
    assert layers and all(layer.active for layer in layers)
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    plain = torch.log_softmax(model(x), 1)
    whole = SelfEnsemble(model, 10)(x)
    chunked = SelfEnsemble(model, 10, max_rows=8)(x)
    assert torch.allclose(whole, plain, atol=1e-5) and torch.allclose(chunked, plain, atol=1e-5)
    chunked.sum().backward()
    assert x.grad.abs().sum() > 0
    # With real randomness, chunked passes still average to a distribution over the classes.
    random = SelfEnsemble(build_model(Config(positions=(1,), keep_prob=0.5)).eval(), 10, max_rows=8)(x)
    assert torch.allclose(random.exp().sum(1), torch.ones(4), atol=1e-5)


def test_generic_model_runs_n_batched_passes():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), SmoothBlock(3, 0.5), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    out = SelfEnsemble(net, 6)(torch.rand(2, 3, 8, 8))
    assert out.shape == (2, 10)
    with pytest.raises(ValueError):
        SelfEnsemble(net, 0)
