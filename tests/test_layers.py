"""Semantics of SmoothBlock, DropBlock and the mixed layer (thesis Algorithm 1; Ghiasi et al.)."""
import pytest
import torch

from smoothblock import DropBlock, MixedBlock, SmoothBlock, drop_block, smooth_block
from smoothblock.layers import block_gamma, block_mask


def _distinct(n=4, c=3, h=16, w=16, seed=0):
    # Positive, all distinct values, so no unit equals the mean by accident.
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed)) + 1.0


def test_keep_prob_one_is_identity():
    x = _distinct()
    assert smooth_block(x, 3, 1.0) is x
    assert torch.equal(SmoothBlock(3, 1.0)(x), x)
    assert torch.equal(DropBlock(3, 1.0)(x), x)


@pytest.mark.parametrize("mean", ["sample", "channel"])
def test_smoothblock_replaces_blocks_with_the_mean_and_keeps_the_rest(mean):
    x = _distinct()
    y = smooth_block(x, 3, 0.6, mean=mean, generator=torch.Generator().manual_seed(1))
    changed = y != x
    # Squares are shared across channels: a unit changes in every channel or in none.
    assert torch.equal(changed.all(dim=1), changed.any(dim=1))
    assert 0 < changed.float().mean() < 1
    dims = (1, 2, 3) if mean == "sample" else (2, 3)
    m = x.mean(dim=dims, keepdim=True).expand_as(x)
    assert torch.allclose(y[changed], m[changed])
    assert torch.equal(y[~changed], x[~changed])  # kept units untouched, nothing rescaled


def test_mean_is_per_sample_not_per_batch():
    x = _distinct(n=2)
    x[1] += 100.0  # a very different second image must not move the first image's mean
    g = torch.Generator().manual_seed(3)
    y = smooth_block(x, 3, 0.5, generator=g)
    changed0 = y[0] != x[0]
    assert torch.allclose(y[0][changed0], x[0].mean().expand(int(changed0.sum())))


def test_a_lone_centre_grows_into_a_clipped_square():
    # gamma = 1 on a map makes every unit a centre; use a 1-row map to see one square's extent.
    covered = block_mask(torch.zeros(1, 1, 1, 1), 5, 1.0)
    assert covered.all()
    torch.manual_seed(0)
    sparse = block_mask(torch.zeros(200, 1, 21, 21), 5, 0.002)
    one = sparse.flatten(1).sum(1) == 25  # samples whose only centre lies away from the border
    assert one.any()
    rows, cols = sparse[one][0, 0].nonzero(as_tuple=True)
    assert rows.max() - rows.min() == 4 and cols.max() - cols.min() == 4


@pytest.mark.parametrize("size,block_size,keep_prob", [(32, 3, 0.7), (16, 5, 0.9), (8, 7, 0.5), (1, 3, 0.7), (7, 4, 0.8)])
def test_calibrated_gamma_keeps_keep_prob_of_the_units(size, block_size, keep_prob):
    torch.manual_seed(0)
    x = torch.zeros(4000 if size < 8 else 400, 1, size, size)
    gamma = block_gamma(size, size, block_size, keep_prob, "calibrated")
    kept = (~block_mask(x, block_size, gamma)).float().mean().item()
    assert kept == pytest.approx(keep_prob, abs=0.015)


def test_thesis_gamma_is_algorithm_1_rate_and_keeps_more_than_keep_prob():
    assert block_gamma(32, 32, 3, 0.7, "thesis") == pytest.approx(0.3 / 9)
    torch.manual_seed(0)
    kept = (~block_mask(torch.zeros(400, 1, 32, 32), 3, 0.3 / 9)).float().mean().item()
    # Overlapping squares cover fewer units than 1 - p: Algorithm 1 keeps about 72% here.
    assert 0.71 < kept < 0.75


def test_one_by_one_map_position_5():
    x = _distinct(n=2000, c=64, h=1, w=1)
    y = SmoothBlock(3, 0.7, seed=0)(x)
    replaced = (y != x).any(dim=1).float().mean().item()
    assert replaced == pytest.approx(0.3, abs=0.03)
    assert torch.allclose(y[(y != x).any(dim=1).view(-1)], x.mean(dim=(1, 2, 3), keepdim=True)[(y != x).any(dim=1).view(-1)].expand(-1, 64, 1, 1))


def test_dropblock_zeroes_blocks_and_scales_per_sample():
    x = _distinct()
    y = drop_block(x, 3, 0.7, generator=torch.Generator().manual_seed(0))
    dropped = (y == 0).all(dim=1, keepdim=True)
    kept_frac = (~dropped).float().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(y, x * (~dropped) / kept_frac)


def test_dropblock_keeps_the_expected_magnitude():
    torch.manual_seed(0)
    x = torch.ones(2000, 2, 8, 8)
    assert drop_block(x, 3, 0.7).mean().item() == pytest.approx(1.0, abs=0.01)


def test_active_in_eval_by_default_and_switches():
    x = _distinct()
    layer = SmoothBlock(3, 0.5).eval()
    assert not torch.equal(layer(x), x)
    layer.active_in_eval = False
    assert torch.equal(layer(x), x)
    layer.train()
    assert not torch.equal(layer(x), x)
    layer.active_in_train = False
    assert torch.equal(layer(x), x)


def test_seed_makes_draws_reproducible():
    x = _distinct()
    assert torch.equal(SmoothBlock(3, 0.5, seed=7)(x), SmoothBlock(3, 0.5, seed=7)(x))
    assert not torch.equal(SmoothBlock(3, 0.5, seed=7)(x), SmoothBlock(3, 0.5, seed=8)(x))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(DropBlock(3, 0.5, generator=g1)(x), DropBlock(3, 0.5, generator=g2)(x))


def test_gradient_flows_through_the_mean():
    x = _distinct(n=1).requires_grad_()
    y = smooth_block(x, 3, 0.5, generator=torch.Generator().manual_seed(0))
    covered = (y != x).detach()
    y.sum().backward()
    n_cov = covered.sum().item()
    # d sum(y) / d x_i = [i kept] + (number of covered units) / numel: every unit gets the mean's share.
    expected = (~covered).float() + n_cov / x.numel()
    assert torch.allclose(x.grad, expected)


@pytest.mark.parametrize("layer", [SmoothBlock(3, 0.7, seed=0), DropBlock(3, 0.7, seed=0), MixedBlock(3, 0.7, seed=0)])
def test_bfloat16(layer):
    x = _distinct().bfloat16()
    y = layer(x)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_cuda():
    x = _distinct().cuda()
    for layer in (SmoothBlock(3, 0.7, seed=0), DropBlock(3, 0.7, seed=0), MixedBlock(3, 0.7)):
        assert layer(x).device.type == "cuda"


def test_mixed_draws_smoothblock_or_dropblock_per_sample():
    torch.manual_seed(0)
    x = _distinct(n=2000, c=2, h=8, w=8)
    y = MixedBlock(3, 0.5, smooth_prob=0.25)(x)
    has_zero = (y == 0).flatten(1).any(dim=1).float().mean().item()
    assert has_zero == pytest.approx(0.75, abs=0.04)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(block_size=0, keep_prob=0.5), "block_size"), (dict(block_size=3, keep_prob=0.0), "keep_prob"),
    (dict(block_size=3, keep_prob=1.5), "keep_prob"), (dict(block_size=3, keep_prob=0.5, gamma="x"), "gamma"),
])
def test_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        SmoothBlock(**kwargs)
    with pytest.raises(ValueError, match="mean"):
        SmoothBlock(3, 0.5, mean="batch")
