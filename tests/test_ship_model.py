"""scripts/ship_model.py's words for how a run trained: plain, lengthened, with SWA, fine-tuned, distilled."""
import re
import sys
from pathlib import Path

from smoothblock import Config
from smoothblock.recipes import resolve_recipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from ship_model import describe_schedule, method_lines  # noqa: E402


def _history(recipe, restart_at=None, steps=10):
    """Per-epoch end-of-epoch lr, as train logs it; restart_at: the epochs the run first had."""
    rows = []
    for epoch in range(recipe.epochs):
        schedule = recipe if restart_at is None or epoch >= restart_at else resolve_recipe(
            Config(epochs=restart_at, lr=recipe.lr))
        rows.append({"epoch": epoch + 1, "lr": schedule.lr_at((epoch + 1) * steps - 1, steps)})
    return rows


def test_a_plain_run_is_said_to_resume_exactly():
    recipe = resolve_recipe(Config(epochs=20, lr=0.1))
    schedule, lengthened, resumable = describe_schedule(_history(recipe), recipe)
    assert (schedule, lengthened) == ("20 epochs", "") and "equals an uninterrupted one" in resumable


def test_a_lengthened_run_with_swa_is_said_to_be_a_warm_restart_then_swa():
    recipe = resolve_recipe(Config(epochs=34, lr=0.1, swa_epochs=4))
    schedule, lengthened, resumable = describe_schedule(_history(recipe, restart_at=20), recipe)
    assert schedule == "20 epochs, then lengthened to 30 (below), then 4 epochs of SWA (below)"
    assert "at epoch 21 it rose from zero" in lengthened and "uninterrupted 30-epoch run" in lengthened
    assert "equals" not in resumable


def test_a_fine_tuned_distilled_run_names_its_start_and_its_teachers_and_a_plain_one_neither():
    cfg = Config(epochs=20, init_from="runs/a/model.safetensors", teachers=["t1.safetensors", "t2.safetensors"],
                 distill_weight=0.9, distill_temperature=4.0)
    lines = method_lines(cfg, resolve_recipe(cfg), lengthened="")
    assert "started from the weights of `runs/a/model.safetensors`" in lines
    assert "0.1 x the label cross-entropy + 0.9 x T^2" in lines and "T = 4" in lines
    assert "`t1.safetensors`, `t2.safetensors`" in lines
    assert lines.index("Fine-tuned") < lines.index("Knowledge distillation")
    assert method_lines(Config(epochs=20), resolve_recipe(Config(epochs=20)), lengthened="") == ""


def test_a_soup_ships_with_a_section_and_a_log_per_kept_run_and_an_unlogged_one_is_refused(
        soup_ingredients, tmp_path, monkeypatch, capsys):
    import json

    import ship_model
    from smoothblock.soup import make_soup

    monkeypatch.setattr(ship_model, "WEIGHTS_DIR", tmp_path / "weights")
    soup = make_soup(soup_ingredients, tmp_path / "soup", soup="uniform")
    assert ship_model.main([str(tmp_path / "soup"), "--name", "tiny", "--command", "train a", "--command",
                            "soup them", "--hardware", "here"]) == 0
    card = (tmp_path / "weights" / "tiny.md").read_text()
    lines = [json.loads(line) for line in (tmp_path / "weights" / "tiny.log.jsonl").read_text().splitlines()]
    assert [line["run"] for line in lines] == [i["path"] for i in soup.ingredients for _ in range(2)]  # best first
    assert len(re.findall(r"^\| \d+ \|", card, flags=re.M)) == len(lines)
    assert all(card.count(f"### `{p}`") == 2 for p in soup_ingredients)  # its training and its log
    assert "1. `train a`" in card and "2. `soup them`" in card
    assert f"validation split of the soup: {100 * soup.val_acc:.2f}%" in card
    assert re.search(r"Clean accuracy on the 20 test images: [\d.]+%", card)

    (Path(soup_ingredients[0]).parent / "log.jsonl").rename(tmp_path / "moved.jsonl")
    try:
        assert ship_model.main([str(tmp_path / "soup"), "--name", "tiny2", "--command", "c", "--hardware", "h"]) == 2
    finally:
        (tmp_path / "moved.jsonl").rename(Path(soup_ingredients[0]).parent / "log.jsonl")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "log.jsonl does not exist" in err
    assert not (tmp_path / "weights" / "tiny2.md").exists()
