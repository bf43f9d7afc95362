"""Stochastic Weight Averaging (Izmailov et al. 2018) at the end of a run: schedule, average, resume."""
import pytest
import torch

from smoothblock import Config, ConfigError
from smoothblock.checkpoint import load_training_state
from smoothblock.recipes import resolve_recipe
from smoothblock.train import train


def test_swa_epochs_run_at_a_constant_lr_after_the_unchanged_schedule():
    plain = resolve_recipe(Config(epochs=10, lr=0.1))
    swa = resolve_recipe(Config(epochs=14, lr=0.1, swa_epochs=4))
    steps = 7
    # The first 10 epochs follow the 10-epoch schedule exactly, so a finished run lengthened with
    # SWA is the same run as one planned with SWA from the start.
    assert [swa.lr_at(s, steps) for s in range(10 * steps)] == [plain.lr_at(s, steps) for s in range(10 * steps)]
    assert {swa.lr_at(s, steps) for s in range(10 * steps, 14 * steps)} == {0.05}  # lr / 2 by default
    assert resolve_recipe(Config(epochs=14, swa_epochs=4, swa_lr=0.01)).lr_at(10 * steps, steps) == 0.01


def test_bad_swa_settings_are_refused():
    with pytest.raises(ConfigError, match="swa_epochs must be >= 0"):
        Config(swa_epochs=-1)
    with pytest.raises(ConfigError, match="swa_lr must be > 0"):
        Config(swa_lr=0.0)
    with pytest.raises(ConfigError, match=r"swa_epochs \(5\) must be fewer than epochs \(5\)"):
        resolve_recipe(Config(epochs=5, swa_epochs=5))


def test_the_model_is_the_average_of_the_swa_epochs_weights(tiny_config):
    cfg = tiny_config.replace(epochs=3, swa_epochs=2)
    raw = []
    last = lambda: load_training_state(f"{cfg.out_dir}/last.pt")  # noqa: E731
    result = train(cfg, progress=False, on_epoch_end=lambda epoch, metrics, model: raw.append(last()["model"]))
    assert [h.get("swa_models") for h in result.history] == [None, 1, 2]
    assert {round(h["lr"], 6) for h in result.history[1:]} == {round(resolve_recipe(cfg).swa_lr, 6)}
    final = result.model.state_dict()
    for key, value in final.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # recomputed from the training images, not averaged
        assert torch.allclose(value, (raw[1][key] + raw[2][key]) / 2, atol=1e-6), key
    # The batch-norm statistics were recomputed for the averaged weights: not the last epoch's.
    bn = next(k for k in final if k.endswith("running_mean"))
    assert not torch.allclose(final[bn], raw[2][bn])


def test_a_finished_run_lengthened_with_swa_equals_one_planned_with_it(tiny_config, tmp_path):
    planned = train(tiny_config.replace(epochs=4, swa_epochs=2, out_dir=str(tmp_path / "planned")), progress=False)
    first = tiny_config.replace(epochs=2, out_dir=str(tmp_path / "lengthened"))
    train(first, progress=False)
    lengthened = train(first.replace(epochs=3, swa_epochs=1), resume=True, progress=False)  # interrupted
    lengthened = train(first.replace(epochs=4, swa_epochs=2), resume=True, progress=False)
    assert [h["swa_models"] for h in lengthened.history[2:]] == [1, 2]
    for key, value in planned.model.state_dict().items():
        assert torch.allclose(value, lengthened.model.state_dict()[key], atol=1e-5), key
