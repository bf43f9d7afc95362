"""Data loading: a post-hoc search decodes only the validation images it scores, and they are the
same images, in the same order, as from the whole decoded training split."""
from __future__ import annotations

import torch

import smoothblock.data as data
from smoothblock.data import load_dataset, load_splits, split_indices


def _counting(monkeypatch) -> list[int]:
    decoded: list[int] = []
    original = data._decode
    monkeypatch.setattr(data, "_decode", lambda files, desc: decoded.append(len(files)) or original(files, desc))
    return decoded


def test_validation_images_only_decode_no_other_training_image(image_folder, tmp_path, monkeypatch):
    decoded = _counting(monkeypatch)
    cold = tmp_path / "cold"
    only = load_splits(str(image_folder), val_size=20, split_seed=3, subset=0, need_test=False, val_images=12,
                       cache_dir=str(cold))
    assert decoded == [12] and len(only.train) == 0 and len(only.val) == 12
    # The same images as the whole split gives, decoded into another cache.
    whole = load_splits(str(image_folder), val_size=20, split_seed=3, need_test=False, cache_dir=str(tmp_path / "w"))
    assert decoded == [12, 80]
    assert torch.equal(only.val.images, whole.val.images[:12]) and torch.equal(only.val.labels, whole.val.labels[:12])
    # A second search reads its images back from the cache, and a whole-split cache serves a subset too.
    again = load_splits(str(image_folder), val_size=20, split_seed=3, subset=0, need_test=False, val_images=12,
                        cache_dir=str(cold))
    served = load_splits(str(image_folder), val_size=20, split_seed=3, subset=0, need_test=False, val_images=12,
                         cache_dir=str(tmp_path / "w"))
    assert decoded == [12, 80] and torch.equal(again.val.images, only.val.images)
    assert torch.equal(served.val.images, only.val.images)


def test_a_subset_by_position_is_those_images_of_the_fixed_order(image_folder, tmp_path):
    whole, classes = load_dataset(str(image_folder), "train", str(tmp_path / "a"))
    _, val_idx = split_indices(len(whole), 20, 0)
    part, same_classes = load_dataset(str(image_folder), "train", str(tmp_path / "b"), positions=val_idx)
    assert classes == same_classes and torch.equal(part.images, whole.images[val_idx])
    assert torch.equal(part.labels, whole.labels[val_idx])


def test_a_posthoc_search_decodes_only_its_validation_and_audit_images(image_folder, tmp_path, monkeypatch):
    from search.config import SearchConfig
    from trainables.assets import load_assets

    from .search_fixtures import tiny_checkpoint

    model = str(tiny_checkpoint(tmp_path / "m.safetensors", image_folder))
    decoded = _counting(monkeypatch)
    search = SearchConfig.from_dict({
        "trainable": "posthoc", "model": model, "val_images": 6, "chunk_images": 3, "audit_images": 8,
        "attacks": ["pgd"], "base": {"data": str(image_folder), "val_size": 20, "device": "cpu", "bf16": False,
                                     "cache_dir": str(tmp_path / "cache")},
        "space": {"keep_prob": {"low": 0.5, "high": 0.9}}})
    assets = load_assets("posthoc", search.base, model, search.val_images + search.audit_images, search.attacks,
                         search.attack_settings(), 0)
    assert decoded == [14] and len(assets.splits.val) == 14 and len(assets.splits.train) == 0
