"""Model soups (Wortsman et al. 2022): averaged weights, greedy and uniform recipes, refusals."""
import json

import pytest
import torch
from safetensors import safe_open

from smoothblock import CheckpointError, ConfigError, load_model
from smoothblock.checkpoint import load_checkpoint
from smoothblock.cli import main
from smoothblock.data import load_splits
from smoothblock.soup import average_weights, make_soup
from smoothblock.train import accuracy

from .conftest import fails_in_one_line


def weights(path):
    return load_checkpoint(path)[1]


def test_average_weights_is_the_mean_of_floats_and_keeps_the_first_count():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(9)}
    averaged = average_weights([a, b])
    assert torch.equal(averaged["w"], torch.tensor([2.0, 4.0]))
    assert averaged["n"].item() == 5


def test_a_greedy_soup_is_the_average_of_what_it_kept_and_no_worse_than_its_best_ingredient(soup_ingredients, tmp_path):
    result = make_soup(soup_ingredients, tmp_path / "soup")
    record = json.loads((tmp_path / "soup" / "soup.json").read_text())
    assert record["soup"] == "greedy" and record["val_acc"] == result.val_acc
    assert sorted(i["path"] for i in record["ingredients"]) == sorted(soup_ingredients)
    alone = [i["val_acc"] for i in record["ingredients"]]
    assert alone == sorted(alone, reverse=True) and record["ingredients"][0]["kept"]
    assert result.val_acc >= alone[0]
    best = -1.0  # Recipe 1: a model stays exactly when the soup with it scores no lower than before
    for ingredient in record["ingredients"]:
        assert ingredient["kept"] == (ingredient["soup_val_acc"] >= best), record
        best = max(best, ingredient["soup_val_acc"])
    assert best == record["val_acc"]
    kept = [i["path"] for i in record["ingredients"] if i["kept"]]
    saved_cfg, saved = load_checkpoint(tmp_path / "soup" / "model.safetensors")
    expected = average_weights([weights(p) for p in kept])
    for key, value in expected.items():
        assert torch.allclose(saved[key], value), key
    # The recorded accuracy is the saved model's, measured again here on the same split.
    assert saved_cfg.out_dir == str(tmp_path / "soup")
    splits = load_splits(saved_cfg.data, val_size=saved_cfg.val_size, split_seed=saved_cfg.split_seed,
                         need_test=False)
    model = load_model(tmp_path / "soup" / "model.safetensors")
    assert accuracy(model, splits.val, torch.device("cpu")) == result.val_acc
    with safe_open(str(tmp_path / "soup" / "model.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["soup"]) == record


def test_a_uniform_soup_keeps_every_ingredient_and_recompute_bn_changes_only_the_statistics(soup_ingredients, tmp_path):
    averaged = make_soup(soup_ingredients, tmp_path / "avg", soup="uniform")
    recomputed = make_soup(soup_ingredients, tmp_path / "bn", soup="uniform", recompute_bn=True)
    assert all(i["kept"] for i in averaged.ingredients)
    mean = average_weights([weights(p) for p in soup_ingredients])
    a, b = weights(averaged.weights_path), weights(recomputed.weights_path)
    for key, value in mean.items():
        assert torch.allclose(a[key], value), key
        if key.endswith(("running_mean", "running_var")):
            assert not torch.allclose(b[key], value), key
        elif not key.endswith("num_batches_tracked"):
            assert torch.allclose(b[key], value), key


def test_soups_refuse_other_splits_one_model_and_an_existing_soup(soup_ingredients, tmp_path):
    with pytest.raises(ConfigError, match="at least two models"):
        make_soup(soup_ingredients[:1], tmp_path / "one")
    with pytest.raises(ConfigError, match="given twice"):
        make_soup([soup_ingredients[0], soup_ingredients[0]], tmp_path / "twice")
    cfg, state = load_checkpoint(soup_ingredients[0])
    from smoothblock.checkpoint import save_weights
    other = tmp_path / "other-split.safetensors"
    save_weights(other, state, cfg.replace(split_seed=1))
    with pytest.raises(ConfigError, match="split_seed"):
        make_soup([soup_ingredients[1], str(other)], tmp_path / "split")
    assert not (tmp_path / "split").exists()
    make_soup(soup_ingredients[:2], tmp_path / "done", soup="uniform")
    with pytest.raises(CheckpointError, match="already holds a model"):
        make_soup(soup_ingredients[:2], tmp_path / "done")


def test_the_soup_command_prints_each_ingredient_and_refuses_bad_input_in_one_line(soup_ingredients, tmp_path, capsys):
    assert main(["soup", "--models", *soup_ingredients[:2], "--out_dir", str(tmp_path / "cli"), "--soup", "uniform",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("kept") == 2 and "uniform soup of 2: val_acc" in out
    fails_in_one_line(capsys, main, ["soup", "--models", soup_ingredients[0], "--out_dir", str(tmp_path / "x")],
                      "at least two models")
    fails_in_one_line(capsys, main, ["soup", "--models", soup_ingredients[0], "nope.safetensors", "--out_dir",
                                     str(tmp_path / "x")], "nope.safetensors")
    assert not (tmp_path / "x").exists()
