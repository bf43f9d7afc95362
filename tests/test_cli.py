"""The commands, and every kind of bad input: one line on stderr, status 2, nothing half-written."""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from smoothblock import Config
from smoothblock.checkpoint import save_training_state, save_weights
from search.cli import main
from smoothblock.models import create_model

from .conftest import fails_in_one_line


def _fails(capsys, argv, message):
    fails_in_one_line(capsys, main, argv, message)


def _config(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, image_folder):
    out = tmp_path_factory.mktemp("ckpt")
    cfg = Config(data=str(image_folder), val_size=20, method="none", out_dir=str(out))
    save_weights(out / "model.safetensors", create_model("resnet20").state_dict(), cfg)
    return out / "model.safetensors"


def test_train_then_evaluate_through_the_cli(capsys, tmp_path, image_folder):
    out = tmp_path / "run"
    path = _config(tmp_path, f"data: {image_folder}\nval_size: 20\nepochs: 1\nbatch_size: 16\nout_dir: {out}\nbf16: false\n")
    assert main(["train", "--config", path, "--quiet"]) == 0
    assert (out / "model.safetensors").is_file()
    report = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(out / "model.safetensors"), "--attacks", "fgsm", "pgd", "--images", "10",
                 "--data", str(image_folder), "--keep_prob", "0.8", "--json", str(report), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "| no defense |" in table and "| SmoothBlock |" in table and "FGSM 32" in table
    metrics = json.loads(report.read_text())["metrics"]
    assert set(metrics) == {"none", "dropblock", "smoothblock"}
    assert all(0 <= metrics["smoothblock"][k] <= 1 for k in ("clean_acc", "fgsm_8_acc", "pgd_acc"))


@pytest.mark.parametrize("text,message", [
    ("keep_prob: [0.5\n", "not valid YAML"),
    ("keep_probability: 0.5\n", "unknown key 'keep_probability'"),
    ("block_size: three\n", "block_size: Input should be a valid integer, got 'three'"),
    ("keep_prob: 0\n", "keep_prob: Input should be greater than 0"),
    ("keep_prob: 1.5\n", "keep_prob: Input should be less than or equal to 1"),
    ("block_size: 0\n", "block_size: Input should be greater than or equal to 1"),
    ("label_smoothing: 1.0\n", "label_smoothing: Input should be less than 1"),
    ("positions: [7]\n", "position 7 does not exist"),
    ("init_from: nope.safetensors\n", "nope.safetensors is neither a shipped model"),
    ("positions: [4]\nblock_size: 11\n", "block_size 11 is larger than the 8x8 feature map"),
])
def test_bad_configuration(capsys, tmp_path, text, message):
    out = tmp_path / "run"
    _fails(capsys, ["train", "--config", _config(tmp_path, text + f"out_dir: {out}\n")], message)
    assert not out.exists()


def test_missing_config_file(capsys, tmp_path):
    _fails(capsys, ["train", "--config", str(tmp_path / "nope.yaml")], "does not exist")


@pytest.mark.parametrize("make,message", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: (d / "empty" / "train").mkdir(parents=True) or d / "empty", "holds no images"),
])
def test_missing_or_empty_data_folder(capsys, tmp_path, make, message):
    data, out = make(tmp_path), tmp_path / "run"
    _fails(capsys, ["train", "--config", _config(tmp_path, f"data: {data}\nout_dir: {out}\n")], message)
    assert not out.exists()


def test_bad_checkpoints(capsys, tmp_path, checkpoint):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(2048))
    _fails(capsys, ["evaluate", "--model", str(corrupt)], "corrupt or not a checkpoint")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    _fails(capsys, ["evaluate", "--model", str(truncated)], "corrupt or not a safetensors checkpoint")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint at all\n")
    _fails(capsys, ["evaluate", "--model", str(text)], "corrupt or not a checkpoint")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    _fails(capsys, ["evaluate", "--model", str(plain)], "not a smoothblock checkpoint")
    other = tmp_path / "resnet32.pt"  # resnet32 weights under a resnet20 configuration
    save_training_state(other, {"config": Config().to_yaml(), "model": create_model("resnet32").state_dict()})
    _fails(capsys, ["evaluate", "--model", str(other)], "does not hold resnet20 weights")
    _fails(capsys, ["evaluate", "--model", "resnet20-imagenet"], "neither a shipped model")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(capsys, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"format": "smoothblock/2", "model": _RunsCode(marker)}, f)
    _fails(capsys, ["evaluate", "--model", str(evil)], "would run code")
    zipped = tmp_path / "evil_zip.pt"
    torch.save({"format": "smoothblock/2", "model": _RunsCode(marker)}, zipped)
    _fails(capsys, ["evaluate", "--model", str(zipped)], "would run code")
    assert not marker.exists()


def test_existing_run_needs_resume(capsys, tmp_path, image_folder):
    out = tmp_path / "run"
    path = _config(tmp_path, f"data: {image_folder}\nval_size: 20\nepochs: 1\nbatch_size: 16\nout_dir: {out}\nbf16: false\n")
    assert main(["train", "--config", path, "--quiet"]) == 0
    _fails(capsys, ["train", "--config", path], "pass --resume")
    assert main(["train", "--config", path, "--resume", "--quiet"]) == 0  # all epochs done: nothing to do


def test_a_bad_init_from_is_one_line_and_trains_nothing(capsys, tmp_path, image_folder, checkpoint):
    out = tmp_path / "run"
    path = _config(tmp_path, f"data: {image_folder}\nval_size: 20\nepochs: 1\nbatch_size: 16\nout_dir: {out}\nbf16: false\n")
    _fails(capsys, ["train", "--config", path, "--init_from", str(tmp_path / "nope.safetensors")], "neither a shipped model")
    _fails(capsys, ["train", "--config", path, "--init_from", str(checkpoint), "--arch", "resnet32"],
           "holds a resnet20 for 10 classes, not a resnet32")
    assert not out.exists()


def test_bad_evaluate_options_write_nothing(capsys, tmp_path, checkpoint):
    report = tmp_path / "m.json"
    _fails(capsys, ["evaluate", "--model", str(checkpoint), "--keep_prob", "2", "--json", str(report)], "keep_prob")
    _fails(capsys, ["evaluate", "--model", str(checkpoint), "--images", "0", "--json", str(report)], "--images must be >= 1")
    _fails(capsys, ["evaluate", "--model", str(checkpoint), "--positions", "4", "--block_size", "9"], "larger than")
    _fails(capsys, ["evaluate", "--model", str(checkpoint), "--data", str(tmp_path / "none")], "does not exist")
    assert not report.exists()


def test_without_data_and_without_internet_evaluate_names_the_dataset_and_the_flag(tmp_path):
    # No network: every download goes to a proxy that refuses connections.
    env = {**os.environ, "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "no_proxy": ""}
    proc = subprocess.run([sys.executable, "-m", "search.cli", "evaluate", "--model", "resnet20-cifar10",
                           "--cache_dir", str(tmp_path / "cache"), "--quiet"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "CIFAR-10" in proc.stderr and "--data" in proc.stderr


def test_console_script_exit_status_and_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("gamma: sometimes\n")
    proc = subprocess.run([sys.executable, "-m", "search.cli", "train", "--config", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "smoothblock: error: c.yaml: gamma: must be one of calibrated, thesis, got 'sometimes'\n".replace(
        "c.yaml", str(path))
    proc = subprocess.run([sys.executable, "-m", "search.cli", "evaluate"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_defended_rows_turn_a_train_time_defense_on_at_test_time(capsys, tmp_path, image_folder):
    cfg = Config(data=str(image_folder), val_size=20, defense_at="train")
    path = tmp_path / "trained-with-smoothblock.safetensors"
    save_weights(path, create_model("resnet20").state_dict(), cfg)
    report = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(path), "--attacks", "fgsm", "--images", "5", "--data", str(image_folder),
                 "--json", str(report), "--quiet"]) == 0
    configs = json.loads(report.read_text())["configs"]
    assert configs["smoothblock"]["defense_at"] == "both" and configs["none"]["method"] == "none"


def test_each_position_is_its_own_row(capsys, tmp_path, checkpoint, image_folder):
    report = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(checkpoint), "--data", str(image_folder), "--methods", "none", "smoothblock", "--each_position",
                 "--positions", "1", "5", "--attacks", "fgsm", "--images", "4", "--json", str(report), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "| SmoothBlock, position 1 |" in table and "| SmoothBlock, position 5 |" in table
    written = json.loads(report.read_text())
    assert written["complete"] is True and list(written["metrics"]) == ["none", "smoothblock@1", "smoothblock@5"]
    configs = written["configs"]
    assert configs["smoothblock@5"]["positions"] == [5] and configs["smoothblock@5"]["block_size"] == 3


@pytest.mark.parametrize("command", ["train", "evaluate", "search", "export", "ui"])
def test_every_command_prints_its_help(capsys, command):
    from search.cli import main as full_main

    with pytest.raises(SystemExit) as exit_info:
        full_main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: smoothblock {command}")
    if command == "evaluate":  # every registered attack is offered, with its cost
        from smoothblock.attacks import ATTACKS

        assert all(name in out for name in ATTACKS) and "passes per image" in out


def test_every_option_of_every_command_says_what_it_does():
    import argparse

    from search.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"train", "evaluate", "reproduce", "search", "export", "ui"} <= set(commands)
    for name, command in commands.items():
        command.format_help()  # renders: no stray % in a help
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help"
    assert "--images IMAGES" in commands["evaluate"].format_help()
    assert "(default: 1000)" in commands["evaluate"].format_help()  # defaults are shown
