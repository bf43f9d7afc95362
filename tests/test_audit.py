"""The objective and the audit against a defense built to mask gradients, and an honest one.

Toy world: 2 classes by brightness (dark < 0.5 < bright), images 8 x 8 of one grey level. Half the
images lie 0.1 from the boundary (truly robust at eps 8/255) and half 0.02 from it (not robust).
The honest model is the brightness rule. The masked one adds a term that reads a zero-mean
checkerboard pattern of the image (0 for every clean image, so its clean answers are the same)
that an eps-8/255 perturbation along the pattern turns into a flip: no image is truly robust; but
its input is quantised with no gradient, so white-box attacks see a zero gradient and fail.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from search.ranking import rank
from smoothblock.attacks import AttackSettings
from smoothblock.audit import audit
from smoothblock.data import TensorDataset
from smoothblock.evaluation import evaluate
from smoothblock.layers import RandomBlockLayer

SUITE = ("transfer", "pgd", "eot_pgd")
SETTINGS = AttackSettings(eot_iter=2, eot_steps=5, apgd_steps=5, square_queries=100, unbounded_steps=10)


class Quantise(RandomBlockLayer):
    """Rounds the input to the 8-bit grid: the identity on images, a zero gradient everywhere.
    A RandomBlockLayer, so the transfer attack switches it off as it would a SmoothBlock."""

    def __init__(self) -> None:
        super().__init__(1, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 255) / 255 if self.active else x


class Toy(nn.Module):
    def __init__(self, masked: bool) -> None:
        super().__init__()
        self.defense = Quantise() if masked else nn.Identity()
        self.gain = 2000.0 if masked else 0.0
        self.scale = nn.Parameter(torch.tensor(200.0))  # torchattacks reads the device off a parameter
        self.register_buffer("pattern", (torch.arange(8)[:, None] + torch.arange(8)).remainder(2).float() * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.defense(x)
        z = self.scale * (h.mean(dim=(1, 2, 3)) - 0.5) + self.gain * (h * self.pattern).mean(dim=(1, 2, 3))
        # A third class no image belongs to: AutoAttack's DLR loss needs three logits.
        return torch.stack([-z, z, torch.full_like(z, -1000.0)], dim=1)


def _data() -> TensorDataset:
    levels = torch.tensor([0.40, 0.48, 0.52, 0.60]).repeat(5)
    images = levels.view(-1, 1, 1, 1).expand(-1, 3, 8, 8)
    return TensorDataset((images * 255).round().to(torch.uint8), (levels > 0.5).long())


def _score(model):
    return evaluate(model, _data(), attacks=SUITE, settings=SETTINGS, num_classes=3, cascade=True, progress=False)


def test_a_gradient_masking_defense_is_flagged_and_loses_the_search_to_an_honest_one():
    candidates = {"masked": Toy(masked=True), "honest": Toy(masked=False)}
    pgd_only = {k: evaluate(m, _data(), attacks=("pgd",), settings=SETTINGS, num_classes=3, progress=False)
                for k, m in candidates.items()}
    # Scored by PGD alone, as the old objective did, the masked defense looks at least as robust.
    assert pgd_only["masked"]["pgd_acc"] >= pgd_only["honest"]["pgd_acc"] == 0.5
    rows = []
    for name, model in candidates.items():
        metrics = _score(model)
        rows.append({"id": name, "clean_acc": metrics["clean_acc"], "robust_acc": metrics["robust_acc"], "passes": 1})
    by_id = {r["id"]: r for r in rows}
    # The transfer attack ignores the masked gradient: the worst case says what is true.
    assert by_id["masked"]["robust_acc"] == 0.0 and by_id["honest"]["robust_acc"] == 0.5
    for row in rank(rows, "robust_acc")[:2]:  # both are finalists of this small search
        result = audit(candidates[row["id"]], _data(), suite=SUITE, settings=SETTINGS, num_classes=3)
        row.update(audited_robust_acc=result.robust_acc, obfuscated=result.obfuscated, reasons=result.reasons)
    assert by_id["masked"]["obfuscated"]
    assert any("transfer/black-box" in r for r in by_id["masked"]["reasons"])
    assert any("eps 1" in r for r in by_id["masked"]["reasons"])
    assert not by_id["honest"]["obfuscated"], by_id["honest"]["reasons"]
    assert by_id["honest"]["audited_robust_acc"] == 0.5
    assert rank(rows, "robust_acc")[0]["id"] == "honest"


def test_a_deterministic_undefended_model_is_not_flagged():
    result = audit(Toy(masked=False), _data(), suite=SUITE, settings=SETTINGS, num_classes=3)
    assert not result.obfuscated, result.reasons
    assert result.metrics["unbounded_acc"] == 0.0 and result.metrics["transfer_broke"] == 0.0


def test_each_check_fails_when_its_indicator_is_removed(monkeypatch):
    """The masked defense with the checks' thresholds raised past what it shows passes: the checks,
    not something else, flag it."""
    from smoothblock.audit import AuditThresholds

    lax = AuditThresholds(max_transfer_gain=1.0, max_unbounded_acc=1.0, max_eot_gain=1.0)
    result = audit(Toy(masked=True), _data(), suite=SUITE, settings=SETTINGS, num_classes=3, thresholds=lax)
    assert not result.obfuscated and result.robust_acc == 0.0  # the worst case still holds


def test_a_posthoc_search_crafts_the_transfer_examples_once(image_folder, tmp_path, monkeypatch):
    import smoothblock.attacks.pgd as attacks  # the transfer attack switches the defense off there
    from search.config import SearchConfig
    from trainables.assets import load_assets
    from trainables.posthoc import score

    from .search_fixtures import tiny_checkpoint

    calls = []
    original = attacks.defense_off
    monkeypatch.setattr(attacks, "defense_off", lambda model: calls.append(1) or original(model))
    search = SearchConfig.from_dict({
        "trainable": "posthoc", "model": str(tiny_checkpoint(tmp_path / "m.safetensors", image_folder)),
        "val_images": 8, "chunk_images": 4, "audit_images": 8, "eot_iter": 2, "eot_steps": 2,
        "base": {"data": str(image_folder), "val_size": 20, "device": "cpu", "bf16": False},
        "space": {"keep_prob": {"low": 0.5, "high": 0.9}}})
    assets = load_assets("posthoc", search.base, search.model, 8, search.attacks, search.attack_settings(), 0)
    crafted = len(calls)
    assert crafted >= 1 and assets.transfer.shape == (8, 3, 32, 32)
    for keep_prob in (0.5, 0.9):
        metrics = score(assets.base.replace(method="smoothblock", keep_prob=keep_prob), search, assets)
        assert metrics["images"] == 8 and 0 <= metrics["robust_acc"] <= metrics["transfer_acc"]
    assert len(calls) == crafted  # the trials scored the shared examples; none crafted its own


def test_a_search_started_again_reads_its_transfer_examples_from_the_cache(image_folder, tmp_path, monkeypatch):
    import pickle

    import trainables.assets as assets_module
    import trainables.transfer as transfer_module
    from search.config import SearchConfig

    from .search_fixtures import tiny_checkpoint

    model = str(tiny_checkpoint(tmp_path / "m.safetensors", image_folder))
    search = SearchConfig.from_dict({
        "trainable": "posthoc", "model": model, "val_images": 8, "chunk_images": 4, "audit_images": 8,
        "base": {"data": str(image_folder), "val_size": 20, "device": "cpu", "bf16": False,
                 "cache_dir": str(tmp_path / "cache")},
        "space": {"keep_prob": {"low": 0.5, "high": 0.9}}})

    def load(seed=0):
        return assets_module.load_assets("posthoc", search.base, model, 8, search.attacks, search.attack_settings(), seed)

    first = load()
    assert len(list((tmp_path / "cache" / "transfer").glob("*.safetensors"))) == 1
    crafted = []
    original = transfer_module.craft_transfer
    monkeypatch.setattr(transfer_module, "craft_transfer", lambda *a, **k: crafted.append(1) or original(*a, **k))
    assert torch.equal(load().transfer, first.transfer) and not crafted  # read back, bit for bit
    load(seed=1)
    assert crafted == [1]  # another seed is another key: crafted again
    # What every trial receives through the object store holds the 8 images it scores, not the data
    # set behind them (a view of a tensor pickles its whole storage).
    assert len(pickle.dumps(first)) < 2 * (first.splits.val.images.nbytes + first.transfer.nbytes) + 2**20


def test_an_attack_batch_holds_rows_so_an_ensemble_keeps_the_graph_of_one_pass():
    from smoothblock import Config
    from trainables.scoring import attack_batch

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    four = Config(method="smoothblock", positions=[1], ensemble=4)
    assert attack_batch(Config(method="none"), None, cpu) == 200
    assert attack_batch(four, None, cpu) == 50 and attack_batch(four, None, gpu) == 2048
    assert attack_batch(four.replace(defense_at="train"), None, cpu) == 200  # one pass at test time
    assert attack_batch(four, 2, cpu) == 1


def test_the_gpu_path_bf16_attacks_in_one_batch_runs_on_the_cpu(image_folder, tmp_path):
    from search.config import SearchConfig
    from smoothblock.defended import Autocast
    from trainables.assets import load_assets
    from trainables.posthoc import score

    from .search_fixtures import tiny_checkpoint

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    logits = Autocast(model, "cpu")(torch.rand(2, 3, 2, 2))
    assert logits.dtype == torch.float32
    search = SearchConfig.from_dict({
        "trainable": "posthoc", "model": str(tiny_checkpoint(tmp_path / "m.safetensors", image_folder)),
        "val_images": 8, "chunk_images": 8, "audit_images": 8, "attacks": ["pgd"], "attack_bf16": True,
        "attack_rows": 8192,
        "base": {"data": str(image_folder), "val_size": 20, "device": "cpu", "bf16": False},
        "space": {"keep_prob": {"low": 0.5, "high": 0.9}}})
    assets = load_assets("posthoc", search.base, search.model, 8, search.attacks, search.attack_settings(), 0)
    metrics = score(assets.base.replace(method="smoothblock", keep_prob=0.7), search, assets)
    assert metrics["images"] == 8 and 0 <= metrics["robust_acc"] <= metrics["clean_acc"] <= 1


def test_the_finalists_audit_runs_on_fresh_images_and_the_base_is_scored_once(image_folder, tmp_path, monkeypatch):
    import smoothblock.audit as audit_module
    from search.config import SearchConfig
    from smoothblock.data import fingerprint
    from trainables import audit as trainable_audit
    from trainables import posthoc
    from trainables.assets import load_assets

    from .search_fixtures import tiny_checkpoint

    search = SearchConfig.from_dict({
        "trainable": "posthoc", "model": str(tiny_checkpoint(tmp_path / "m.safetensors", image_folder)),
        "val_images": 8, "chunk_images": 4, "audit_images": 12, "eot_iter": 2, "eot_steps": 2,
        "base": {"data": str(image_folder), "val_size": 20, "device": "cpu", "bf16": False,
                 "cache_dir": str(tmp_path / "cache")},
        "space": {"keep_prob": {"low": 0.5, "high": 0.9}}})
    assets = load_assets("posthoc", search.base, search.model, 20, search.attacks, search.attack_settings(), 0)
    audited = []
    original = audit_module.audit
    monkeypatch.setattr(trainable_audit, "audit", lambda model, data, **kw: audited.append(data) or original(model, data, **kw))
    result = trainable_audit.audit_defense({"method": "smoothblock", "keep_prob": 0.7}, search, assets)
    searched = assets.splits.val.take(slice(0, 8))
    assert len(audited[0]) == 12 and fingerprint(audited[0]) == fingerprint(assets.splits.val.take(slice(8, 20)))
    assert not set(map(bytes, audited[0].images.numpy())) & set(map(bytes, searched.images.numpy()))
    assert result["outcomes"]["robust"].shape == (12,) and result["metrics"]["images"] == 12
    # The base: scored once, then read back from the cache; its outcomes are per image.
    first = posthoc.undefended_score(search, assets)
    assert first.clean.shape == (8,) and first.robust.shape == (8,)
    assert first.metrics["robust_acc"] == first.robust.float().mean().item()
    monkeypatch.setattr(posthoc, "score", lambda *a, **k: pytest.fail("scored the base again"))
    again = posthoc.undefended_score(search, assets)
    assert torch.equal(again.robust, first.robust) and again.metrics == first.metrics
