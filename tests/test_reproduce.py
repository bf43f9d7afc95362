"""``smoothblock reproduce``: the plan, the cells it keeps, and the smoke pipeline end to end."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reproduction import BUDGETS, EXPERIMENT_IDS, reproduce
from reproduction.plan import MAX_ROWS, MODELS, Row, cell_batch_size, cell_settings, experiments, suite_attacks
from reproduction.runner import recipe_path
from reproduction.thesis import THESIS


def test_every_thesis_row_is_in_the_plan_and_every_model_has_weights_or_a_recipe():
    plan = experiments(BUDGETS["cpu"])
    for exp_id, rows in THESIS.items():
        labels = {r.label for r in plan[exp_id].rows}
        assert set(rows) <= labels, exp_id
    assert {r.model for e in plan.values() for r in e.rows} == set(MODELS)
    for name in MODELS[1:]:
        assert recipe_path(name).is_file(), name  # the four trained models are reproducible by name


def test_eot_draws_follow_the_randomness_and_the_passes():
    budget = BUDGETS["cpu"]
    rows = {r.label: r for r in experiments(budget)["4.8"].rows + experiments(budget)["4.4"].rows}
    assert cell_settings(budget, rows["plain"]).eot_iter == 1  # deterministic: one draw is the gradient
    assert cell_settings(budget, rows["1 pass"]).eot_iter == 32
    assert cell_settings(budget, rows["10 passes"]).eot_iter == 4  # 4 x 10 >= 32 draws per gradient
    assert cell_settings(budget, rows["100 passes"]).eot_iter == 1
    assert cell_settings(budget, rows["100 passes"]).cw_images == budget.ensemble_cw_images
    # AutoAttack-rand's 20 fixed draws are left out of large ensembles; FGSM's EOT form where it is FGSM.
    assert "autoattack_rand" in suite_attacks(budget, rows["10 passes"], "adaptive")[0]
    assert "autoattack_rand" not in suite_attacks(budget, rows["50 passes"], "adaptive")[0]
    assert suite_attacks(budget, rows["plain"], "curve")[0] == ("fgsm",)
    assert suite_attacks(budget, rows["1 pass"], "curve")[0] == ("fgsm", "transfer_fgsm", "eot_fgsm")
    assert "eot_fgsm" not in suite_attacks(budget, rows["100 passes"], "curve")[0]


def test_large_ensembles_cut_the_batch_so_a_gradient_holds_at_most_max_rows():
    rows = {r.label: r for r in experiments(BUDGETS["cpu"])["4.8"].rows}
    assert [cell_batch_size(rows[k]) for k in ("1 pass", "10 passes", "50 passes", "100 passes")] == [256, 256, 256, 128]
    assert all(cell_batch_size(r) * r.passes <= max(MAX_ROWS, r.passes) for r in rows.values())


def test_a_trained_model_tested_without_its_layer_is_deterministic():
    rows = {r.label: r for r in experiments(BUDGETS["cpu"])["4.4"].rows}
    assert not rows["smoothblock-trained"].random_at_test and rows["smoothblock-trained"].overrides["defense_at"] == "train"
    assert Row("x", "m", (("method", "smoothblock"), ("defense_at", "both")), ()).random_at_test


@pytest.mark.integration
def test_smoke_budget_runs_the_whole_pipeline_and_resumes(image_folder, tmp_path):
    out, work = tmp_path / "docs" / "reproduction.md", tmp_path / "work"
    reproduce(budget="smoke", data=str(image_folder), out=out, work_dir=work, device="cpu", progress=False)
    text = out.read_text(encoding="utf-8")
    for title in ("Table 4.1", "Figures 4.1-4.3", "Figure 4.4", "Figure 4.5", "Figure 4.6", "Figure 4.7",
                  "Figure 4.8"):
        assert f"## {title}" in text, title
    assert "| smoothblock / smoothblock | 89.34 / " in text  # the thesis beside ours
    assert "**worst**" in text and "Budget `smoke`" in text
    assert f"smoothblock reproduce --budget smoke --data {image_folder} --out {out} --work_dir {work}" in text
    figures = {p.name for p in (out.parent / "reproduction").glob("*.png")}
    assert {"positions.png", "fgsm-4-4.png", "fgsm-4-5.png", "fgsm-4-7.png", "fgsm-4-8.png", "passes.png",
            "cams.png"} <= figures
    for png in (out.parent / "reproduction").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # Models a budget trains stay that budget's: a smoke run's one-epoch models never stand in for a cpu run's.
    assert all(p.parent.parent == work / "smoke" / "models" for p in work.rglob("model.safetensors"))
    cells = sorted((work / "smoke" / "cells").glob("*.json"))
    assert len(cells) >= 30
    record = json.loads(cells[0].read_text())
    # The header totals the cells' own measuring times (each cell once, however many tables show it).
    # fsum: the same total whatever the order the cells are added in (a plain sum can land either side of a
    # rounding boundary, as it did in CI at 3 s).
    total = math.fsum(json.loads(p.read_text())["seconds"] for p in cells)
    shown = re.search(r"its cells took ([\d.,]+) (s|min|h) to measure", text)
    unit = {"s": 1, "min": 60, "h": 3600}[shown[2]]
    resolution = 1 if unit == 1 else 0.1 * unit  # "N s" is whole seconds, min and h one decimal
    assert abs(float(shown[1].replace(",", "")) * unit - total) <= resolution / 2 + 1e-9, (shown[0], total)
    assert {"key", "model_sha256", "suite", "attacks", "settings", "metrics"} <= set(record)
    # A second run reads every cell back; a lost cell (a crash mid-cell) is measured again.
    stamps = {p: p.stat().st_mtime_ns for p in cells}
    lost = cells[3]
    lost.unlink()
    reproduce(budget="smoke", data=str(image_folder), out=out, work_dir=work, device="cpu", progress=False)
    assert lost.is_file()
    assert all(p.stat().st_mtime_ns == stamps[p] for p in cells if p != lost)


def test_bad_input_is_one_line_and_status_2(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "search.cli", "reproduce", *args], capture_output=True,
                              text=True, cwd=tmp_path, timeout=120)
    bad = run("--budget", "huge")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "huge" in bad.stderr
    bad = run("--experiments", "4.2")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "4.2" in bad.stderr
    bad = run("--budget", "smoke", "--model_dir", str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"smoothblock: error: model_dir {tmp_path / 'nowhere'} is not a folder"]
    bad = run("--budget", "smoke", "--device", "tpu")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "smoothblock: error: device must be auto, cpu, cuda or cuda:N, got 'tpu'"]
    bad = run("--budget", "smoke", "--out", str(tmp_path))
    assert bad.returncode == 2 and "out must be a Markdown file" in bad.stderr
    assert not (tmp_path / "docs").exists() and not (tmp_path / "runs").exists()

