import json
from pathlib import Path

import pytest
import torch

from smoothblock import CheckpointError, Config, ConfigError, load_model
from smoothblock.data import load_splits
from smoothblock.train import train


def test_train_writes_checkpoints_and_a_log(tiny_config):
    result = train(tiny_config, progress=False)
    out = result.weights_path.parent
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "last.pt", "config.yaml", "log.jsonl"}
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(0 <= line["val_acc"] <= 1 and line["train_loss"] > 0 for line in lines)
    assert Config.load(out / "config.yaml") == tiny_config


def test_the_same_configuration_and_seed_train_to_the_same_metrics_and_weights(tiny_config, tmp_path):
    first, second = (train(tiny_config.replace(out_dir=str(tmp_path / d), method="smoothblock", defense_at="both"),
                           progress=False) for d in ("a", "b"))
    drop_time = [{k: v for k, v in row.items() if k != "seconds"} for row in first.history]
    assert drop_time == [{k: v for k, v in row.items() if k != "seconds"} for row in second.history]
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key


def test_resume_continues_exactly(tiny_config, tmp_path):
    straight = train(tiny_config.replace(out_dir=str(tmp_path / "a")), progress=False)
    interrupted = tiny_config.replace(out_dir=str(tmp_path / "b"))

    def stop_after_first_epoch(epoch, metrics, model):
        raise KeyboardInterrupt  # as if the run were killed right after epoch 1's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(interrupted, on_epoch_end=stop_after_first_epoch, progress=False)
    resumed = train(interrupted, resume=True, progress=False)
    assert len(resumed.history) == 2
    for key, value in straight.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[key], atol=1e-5), key


def test_existing_checkpoint_needs_resume_and_resume_needs_the_same_config(tiny_config):
    train(tiny_config.replace(epochs=1), progress=False)
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        train(tiny_config.replace(epochs=1), progress=False)
    with pytest.raises(CheckpointError, match="another configuration"):
        train(tiny_config.replace(keep_prob=0.5), resume=True, progress=False)


def test_a_run_moved_to_another_folder_resumes_and_may_be_lengthened(tiny_config, tmp_path):
    first = tiny_config.replace(epochs=2, out_dir=str(tmp_path / "here"))
    train(first, progress=False)
    (tmp_path / "here").rename(tmp_path / "there")
    resumed = train(first.replace(epochs=4, out_dir=str(tmp_path / "there")), resume=True, progress=False)
    lrs = [h["lr"] for h in resumed.history]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    # The schedule is recomputed for 4 epochs: after ending near zero, the learning rate rises
    # again (a warm restart, as README and the model card say) and falls to zero by epoch 4.
    assert lrs[2] > lrs[1] and lrs[3] < lrs[2]


def test_init_state_starts_from_given_weights(tiny_config):
    from smoothblock.models import create_model

    start = create_model("resnet20").state_dict()
    result = train(tiny_config.replace(epochs=1, lr=1e-12, method="none"), init_state=start, progress=False)
    conv = "stages.stem.0.weight"
    assert torch.allclose(result.model.state_dict()[conv], start[conv], atol=1e-6)


def test_init_from_starts_from_a_checkpoints_weights_and_is_recorded(tiny_config, tmp_path):
    source = train(tiny_config.replace(epochs=1, out_dir=str(tmp_path / "source")), progress=False)
    tuned_cfg = tiny_config.replace(epochs=1, lr=1e-12, init_from=str(source.weights_path),
                                    out_dir=str(tmp_path / "tuned"))
    tuned = train(tuned_cfg, progress=False)
    conv = "stages.stem.0.weight"
    assert torch.allclose(tuned.model.state_dict()[conv], source.model.state_dict()[conv], atol=1e-6)
    assert not torch.allclose(train(tuned_cfg.replace(init_from=None, out_dir=str(tmp_path / "fresh")),
                                    progress=False).model.state_dict()[conv], source.model.state_dict()[conv])
    assert Config.load(tmp_path / "tuned" / "config.yaml").init_from == str(source.weights_path)
    with pytest.raises(ConfigError, match="holds a resnet20"):
        train(tuned_cfg.replace(arch="resnet32", out_dir=str(tmp_path / "deeper")), progress=False)


def test_label_smoothing_overrides_the_recipe():
    from smoothblock.recipes import resolve_recipe
    assert resolve_recipe(Config()).label_smoothing == 0.0
    assert resolve_recipe(Config(label_smoothing=0.1)).label_smoothing == 0.1


def test_cutout_fills_one_clipped_square_per_image_with_the_batch_mean():
    from smoothblock.data import augment

    x = torch.rand(256, 3, 32, 32)
    plain = augment(x, generator=torch.Generator().manual_seed(0))
    # cutout 0 draws nothing more, so earlier runs' augmentations are unchanged
    assert torch.equal(plain, augment(x, cutout=0, generator=torch.Generator().manual_seed(0)))
    cut = augment(x, cutout=8, generator=torch.Generator().manual_seed(0))
    mean = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    filled = (cut != plain).any(1)
    assert ((cut == plain) | (cut == mean)).all()
    for mask in filled:  # one axis-aligned square, at most 8 x 8, clipped at the border
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert 4 <= len(rows) <= 8 and 4 <= len(cols) <= 8
        assert mask.sum() == len(rows) * len(cols)
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)


def test_compiled_training_matches_eager_and_may_be_switched_on_resume(tiny_config, tmp_path):
    cfg = tiny_config.replace(method="none", epochs=2, lr=0.01)  # small steps: no chaos to amplify
    eager = train(cfg.replace(out_dir=str(tmp_path / "eager")), progress=False)
    compiled = train(cfg.replace(compile=True, out_dir=str(tmp_path / "compiled")), progress=False)
    # Inductor fuses and reorders float arithmetic, so the same run agrees closely, not bitwise.
    for a, b in zip(compiled.history, eager.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-2)
    assert compiled.model.state_dict().keys() == eager.model.state_dict().keys()
    resumed = train(cfg.replace(compile=True, epochs=3, out_dir=str(tmp_path / "eager")), resume=True,
                    progress=False)
    assert len(resumed.history) == 3


def test_a_diverging_run_fails_before_writing_the_epoch_checkpoint(tiny_config):
    cfg = tiny_config.replace(method="none", epochs=1, lr=1e30)
    with pytest.raises(FloatingPointError, match="loss is (nan|inf) in epoch 1"):
        train(cfg, progress=False)
    assert not (Path(cfg.out_dir) / "last.pt").exists()


def test_cutout_changes_training_and_a_run_cannot_resume_with_another(tiny_config, tmp_path):
    plain = train(tiny_config.replace(epochs=1, method="none", out_dir=str(tmp_path / "plain")), progress=False)
    cut = train(tiny_config.replace(epochs=1, method="none", cutout=16, out_dir=str(tmp_path / "cut")),
                progress=False)
    assert plain.history[0]["train_loss"] != cut.history[0]["train_loss"]
    with pytest.raises(CheckpointError, match="another configuration"):
        train(tiny_config.replace(epochs=2, method="none", cutout=8, out_dir=str(tmp_path / "cut")),
              resume=True, progress=False)


@pytest.mark.parametrize("adv_training", ["fgsm", "ffgsm", "pgd"])
def test_adversarial_training_with_the_regulariser(tiny_config, adv_training):
    cfg = tiny_config.replace(epochs=1, adv_training=adv_training, adv_steps=2, defense_at="both",
                              adv_ratio=1.0 if adv_training == "ffgsm" else 0.5)
    result = train(cfg, progress=False)
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))
    # The catastrophic-overfitting check runs every epoch of an adversarial run.
    assert 0 <= result.history[0]["val_pgd_acc"] <= result.history[0]["val_acc"] + 0.1
    assert (Path(cfg.out_dir) / "best_pgd.safetensors").is_file()
    assert ("train_adv_acc" in result.history[0]) == (adv_training == "ffgsm")


def test_ffgsm_starts_inside_the_ball_at_random():
    from smoothblock.defended import build_model
    from smoothblock.train import _adversarial
    cfg = Config(method="none", adv_training="ffgsm", adv_eps=8 / 255, adv_alpha=10 / 255)
    model = build_model(cfg).train()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    torch.manual_seed(0)
    first = _adversarial(model, x, y, cfg)
    torch.manual_seed(1)
    second = _adversarial(model, x, y, cfg)
    fgsm = _adversarial(model, x, y, cfg.replace(adv_training="fgsm"))
    assert (first - x).abs().max() <= 8 / 255 + 1e-6 and 0 <= first.min() and first.max() <= 1
    assert not torch.equal(first, second) and not torch.equal(first, fgsm)


def test_paper_recipe_schedule():
    from smoothblock.recipes import resolve_recipe
    recipe = resolve_recipe(Config(recipe="paper"))
    assert (recipe.epochs, recipe.batch_size, recipe.lr) == (200, 128, 1e-3)
    assert recipe.lr_at(79 * 10, 10) == 1e-3
    assert recipe.lr_at(80 * 10, 10) == pytest.approx(1e-4)
    assert recipe.lr_at(180 * 10, 10) == pytest.approx(5e-5)


def test_load_model_puts_any_defense_on_a_checkpoint(tiny_config):
    result = train(tiny_config.replace(epochs=1, method="none"), progress=False)
    x = torch.rand(3, 3, 32, 32)
    plain = load_model(result.weights_path)
    assert not plain.training and torch.equal(plain(x), plain(x))
    defended = load_model(result.weights_path, method="smoothblock", positions=[1], keep_prob=0.7, ensemble=4)
    assert defended.smoothblock_config.ensemble == 4
    out = defended(x)
    assert out.shape == (3, 10) and not torch.equal(out, defended(x))
    also_pt = load_model(result.weights_path.parent / "last.pt")
    assert torch.equal(also_pt(x), plain(x))
    with pytest.raises(CheckpointError, match="holds a resnet20, not a resnet32"):
        load_model(result.weights_path, arch="resnet32")


def test_subset_never_overlaps_validation(image_folder):
    splits = load_splits(str(image_folder), val_size=20, split_seed=0, subset=30)
    assert len(splits.train) == 30 and len(splits.val) == 20 and len(splits.test) == 20
    again = load_splits(str(image_folder), val_size=20, split_seed=0)
    assert torch.equal(again.val.images, splits.val.images)  # the split is fixed by its seed
    train_set = {bytes(t.numpy()) for t in again.train.images}
    assert not any(bytes(t.numpy()) in train_set for t in splits.val.images)


@pytest.mark.parametrize("kind", ["fgsm", "ffgsm", "pgd"])
def test_adversarial_training_crafts_with_the_registry_attack_as_torchattacks_does(kind):
    import torchattacks

    from smoothblock import build_model
    from smoothblock.train import training_attack

    cfg = Config(method="smoothblock", defense_at="both", adv_training=kind, adv_eps=8 / 255, adv_alpha=2 / 255,
                 adv_steps=3, device="cpu")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    direct = {"fgsm": lambda: torchattacks.FGSM(model, eps=8 / 255),
              "ffgsm": lambda: torchattacks.FFGSM(model, eps=8 / 255, alpha=2 / 255),
              "pgd": lambda: torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=3, random_start=True)}[kind]()
    direct.set_model_training_mode(model_training=True, batchnorm_training=False)
    outputs = []
    for attack in (training_attack(model, cfg), direct):
        torch.manual_seed(1)  # the random start and the defense's draws
        outputs.append(attack(images, labels))
    assert torch.equal(outputs[0], outputs[1])
    assert (outputs[0] - images).abs().max() <= 8 / 255 + 1e-6
