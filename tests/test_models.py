import pytest
import torch
import torchvision

from smoothblock import Config, SmoothBlock, build_model, create_model, insert_after
from smoothblock.evaluation import changes_output
from smoothblock.models.resnet_cifar import POSITION_SIZES


@pytest.mark.parametrize("arch,params", [("resnet20", 269_722), ("resnet32", 464_154), ("resnet44", 658_586), ("resnet56", 853_018)])
def test_cifar_resnets_have_he_et_al_sizes(arch, params):
    model = create_model(arch)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_positions_sit_where_the_thesis_puts_them():
    model = build_model(Config(positions=(1, 2, 3, 4, 5), block_size=1)).eval()
    seen = {}
    for p in range(1, 6):
        layer = model.stages[f"defense{p}"]
        assert isinstance(layer, SmoothBlock)
        layer.register_forward_hook(lambda m, i, o, p=p: seen.__setitem__(p, tuple(o.shape)))
    model(torch.rand(2, 3, 32, 32))
    channels = {1: 16, 2: 16, 3: 32, 4: 64, 5: 64}
    assert seen == {p: (2, channels[p], s, s) for p, s in POSITION_SIZES.items()}


def test_defended_model_is_random_in_eval_mode_and_plain_model_is_not():
    x = torch.rand(4, 3, 32, 32)
    defended = build_model(Config(positions=(1,))).eval()
    assert not torch.equal(defended(x), defended(x))
    plain = build_model(Config(method="none")).eval()
    assert torch.equal(plain(x), plain(x))
    train_only = build_model(Config(defense_at="train")).eval()
    assert torch.equal(train_only(x), train_only(x))


def test_smoothblock_after_the_pooling_with_channel_means_is_the_identity():
    # Position 5 follows the global pooling: a 1x1 map, whose per-channel mean is the unit itself.
    # The 48-trial search's finalists were this no-op; the search flags it (`identity`).
    x = torch.rand(32, 3, 32, 32)
    plain = build_model(Config(method="none")).eval()

    def defended(**fields):
        model = build_model(Config(**fields)).eval()
        model.load_state_dict(plain.state_dict())
        return model

    assert not changes_output(plain, plain, x)
    assert not changes_output(defended(positions=(5,), keep_prob=0.5, mean="channel"), plain, x)
    assert not changes_output(defended(positions=(5,), keep_prob=0.5, mean="channel", ensemble=3), plain, x)
    assert changes_output(defended(positions=(5,), keep_prob=0.5, mean="sample"), plain, x)  # across channels
    assert changes_output(defended(positions=(1,), keep_prob=0.7, mean="channel"), plain, x)


def test_weights_are_shared_by_all_defenses():
    keys = set(build_model(Config(method="none")).state_dict())
    for method in ("smoothblock", "dropblock", "mixed"):
        assert set(build_model(Config(method=method, positions=(1, 5))).state_dict()) == keys


def test_unknown_position_and_arch():
    with pytest.raises(ValueError, match="position 6"):
        create_model("resnet20", defenses={6: SmoothBlock})
    with pytest.raises(ValueError, match="unknown arch"):
        create_model("resnet18")


def test_insert_after_named_modules_of_a_torchvision_model():
    model = torchvision.models.resnet18(num_classes=10)
    insert_after(model, {"relu": lambda: SmoothBlock(3, 0.7), "layer2": lambda: SmoothBlock(3, 0.7)})
    assert isinstance(model.layer2[1], SmoothBlock) and isinstance(model.relu[1], SmoothBlock)
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    assert not torch.equal(model(x), model(x))
    with pytest.raises(ValueError, match="not a submodule"):
        insert_after(model, {"nope": lambda: SmoothBlock(3, 0.7)})


def test_folding_the_batch_norms_keeps_the_function_and_its_gradients():
    torch.manual_seed(0)
    model = create_model("resnet20")
    model.train()
    for _ in range(3):  # batch statistics that are not the initial ones
        model(torch.rand(64, 3, 32, 32))
    model.eval()
    folded = create_model("resnet20")
    folded.load_state_dict(model.state_dict())
    folded.fold_batchnorm()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(16, 3, 32, 32, requires_grad=True)
    y = torch.randint(0, 10, (16,))
    logits = model(x)
    grad, = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y), x)
    x2 = x.detach().clone().requires_grad_(True)
    logits2 = folded(x2)
    grad2, = torch.autograd.grad(torch.nn.functional.cross_entropy(logits2, y), x2)
    torch.testing.assert_close(logits2, logits, rtol=1e-4, atol=1e-4)
    assert (grad2 - grad).norm() / grad.norm() < 1e-4  # float rounding, not another gradient
    assert not folded.training
