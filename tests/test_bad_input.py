"""Bad input to ``smoothblock search`` and ``export``: one line on stderr naming the problem, exit
status 2, no traceback, and nothing left behind (no MLflow experiment or run, no results folder).

Every case runs the real CLI against a real MLflow server on 127.0.0.1 and a real local Ray.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from search.cli import main
from smoothblock import Config
from smoothblock.checkpoint import save_weights
from smoothblock.models import create_model

from .conftest import fails_in_one_line
from .search_fixtures import free_port, local_ray, tiny_checkpoint  # noqa: F401

pytestmark = pytest.mark.integration
NAME = "bad"


@pytest.fixture(scope="module")
def env(tmp_path_factory, image_folder, mlflow_server, local_ray):
    """Files the cases point at, and a search name MLflow already holds."""
    root = tmp_path_factory.mktemp("bad-input")
    (root / "empty-data").mkdir()
    corrupt = root / "corrupt.safetensors"
    corrupt.write_bytes(os.urandom(4096))
    other_arch = root / "resnet32-as-resnet20.safetensors"  # a resnet32's weights labelled resnet20
    save_weights(other_arch, create_model("resnet32").state_dict(), Config(data=str(image_folder), val_size=20))
    MlflowClient(mlflow_server).create_experiment("taken")
    return {"root": root, "data": image_folder, "mlflow": mlflow_server, "storage": root / "results",
            "model": tiny_checkpoint(root / "m.safetensors", image_folder), "corrupt": corrupt,
            "other_arch": other_arch}


def _config(env, **changes) -> dict:
    data = {"trainable": "posthoc", "model": str(env["model"]), "trials": 2, "val_images": 8, "audit_top": 0, "audit_images": 8,
            "base": {"data": str(env["data"]), "val_size": 20, "device": "cpu", "bf16": False},
            "space": {"keep_prob": {"low": 0.5, "high": 0.9}}}
    data.update(changes)
    return data


def _search(env, config: dict | str | None = None, *extra: str, name: str = NAME) -> list[str]:
    """``smoothblock search --config FILE --name NAME`` with the test's MLflow and storage."""
    path = env["root"] / f"case-{time.monotonic_ns()}.yaml"
    if isinstance(config, str):
        path.write_text(config)
    else:
        path.write_text(yaml.safe_dump(config if config is not None else _config(env)))
    return ["search", "--config", str(path), "--name", name, "--mlflow-uri", env["mlflow"],
            "--storage", str(env["storage"]), *extra]


# (case id, argv builder, what the one line names)
CASES = [
    ("malformed-yaml", lambda e: _search(e, "trials: [1, 2\nval_images: 8\n"), "is not valid YAML at line"),
    ("yaml-not-a-mapping", lambda e: _search(e, "- trials\n- 4\n"), "must hold a mapping of key: value"),
    ("unknown-key", lambda e: _search(e, _config(e, trails=4)), "unknown key 'trails'"),
    ("unknown-space-parameter", lambda e: _search(e, _config(e, space={"keep_probability": [0.5]})),
     "unknown parameter 'keep_probability'"),
    ("wrong-type", lambda e: _search(e, _config(e, trials="many")), "trials: Input should be a valid integer, got 'many'"),
    ("wrong-type-in-base", lambda e: _search(e, _config(e, base={"data": str(e["data"]), "epochs": "ten"})),
     "base.epochs: Input should be a valid integer"),
    ("out-of-range", lambda e: _search(e, _config(e, space={"keep_prob": {"low": 0.5, "high": 1.5}})),
     "space: keep_prob: Input should be less than or equal to 1"),
    ("empty-range", lambda e: _search(e, _config(e, space={"keep_prob": {"low": 0.9, "high": 0.5}})),
     "keep_prob has low 0.9 > high 0.5"),
    ("empty-space", lambda e: _search(e, _config(e, space={"keep_prob": 0.7})), "search space is empty"),
    ("position-the-model-lacks", lambda e: _search(e, _config(e, space={"positions": [[7]], "keep_prob": [0.5, 0.7]})),
     "position 7 does not exist in resnet20"),
    ("block-larger-than-the-map", lambda e: _search(e, _config(e, space={"positions": [[4]],
                                                                          "block_size": {"low": 1, "high": 9}})),
     "larger than the 8x8 feature map"),
    ("starting-point-outside-the-space", lambda e: _search(e, _config(e, points_to_evaluate=[{"keep_prob": 0.2}])),
     "keep_prob 0.2 is outside the space's range"),
    ("min-clean-acc-above-one", lambda e: _search(e, _config(e, min_clean_acc=1.5)),
     "min_clean_acc: Input should be less than or equal to 1"),
    ("missing-data-folder", lambda e: _search(e, None, "--data", str(e["root"] / "nowhere")), "does not exist"),
    ("empty-data-folder", lambda e: _search(e, None, "--data", str(e["root"] / "empty-data")), "holds no train/ subfolder"),
    ("missing-config-file", lambda e: ["search", "--config", str(e["root"] / "nope.yaml")], "does not exist"),
    ("missing-checkpoint", lambda e: _search(e, None, "--model", str(e["root"] / "nope.safetensors")),
     "neither a shipped model"),
    ("corrupt-checkpoint", lambda e: _search(e, None, "--model", str(e["corrupt"])), "is corrupt"),
    ("checkpoint-of-another-architecture", lambda e: _search(e, None, "--model", str(e["other_arch"])),
     "does not hold resnet20 weights"),
    ("gpus-where-there-are-none", lambda e: _search(e, _config(e, gpus_per_trial=0.25)),
     "the Ray cluster has no GPUs"),
    ("more-cpus-than-the-cluster", lambda e: _search(e, _config(e, cpus_per_trial=64)), "the cluster has 2 and 0"),
    ("zero-trials", lambda e: _search(e, None, "--trials", "0"), "trials: Input should be greater than or equal to 1"),
    ("negative-trials", lambda e: _search(e, None, "--trials", "-3"), "trials: Input should be greater than or equal to 1"),
    ("bad-name", lambda e: _search(e, None, name="../escape"), "name: must be letters, digits"),
    ("existing-name-without-resume", lambda e: _search(e, None, name="taken"), "a search named 'taken' already exists"),
    ("unknown-name-with-resume", lambda e: ["search", "--resume", "never-ran", "--mlflow-uri", e["mlflow"],
                                            "--storage", str(e["storage"])], "no search named 'never-ran'"),
    ("resume-with-other-options", lambda e: ["search", "--resume", "taken", "--trials", "3"],
     "--resume NAME takes the search's own configuration"),
    ("unknown-preset", lambda e: ["search", "--preset", "fast"], "invalid choice: 'fast'"),
    ("unusable-storage-uri", lambda e: _search(e, None)[:-1] + ["nosuchfs://bucket/x"], "--storage nosuchfs://bucket/x"),
    ("export-of-an-unknown-search", lambda e: ["export", "never-ran", "--mlflow-uri", e["mlflow"]],
     "no search named 'never-ran'"),
]


@pytest.mark.parametrize("argv_for, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(env, capsys, argv_for, message):
    client = MlflowClient(env["mlflow"])
    before = {e.name for e in client.search_experiments()}
    fails_in_one_line(capsys, main, argv_for(env), message)
    assert {e.name for e in client.search_experiments()} == before
    taken = client.get_experiment_by_name("taken")
    assert client.search_runs([taken.experiment_id]) == []
    assert not (env["storage"] / NAME).exists() and not (env["storage"] / "taken").exists()


@pytest.mark.parametrize("target", ["mlflow", "ray"])
def test_an_unreachable_service_is_named_within_seconds(env, ray_home, target):
    """The whole command, from a fresh process, before any trial: MLflow's client would otherwise
    retry for minutes and Ray's would wait for a head that never answers."""
    dead = f"127.0.0.1:{free_port()}"
    argv = _search(env, None)
    if target == "mlflow":
        argv[argv.index("--mlflow-uri") + 1] = f"http://{dead}"
    else:
        argv += ["--address", dead]
    # The timeout is the check: a client that retried for minutes would raise TimeoutExpired.
    done = subprocess.run([sys.executable, "-m", "search.cli", *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(ray_home)})
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "unreachable" in done.stderr and dead in done.stderr
    assert MlflowClient(env["mlflow"]).get_experiment_by_name(NAME) is None
    assert not Path(env["storage"] / NAME).exists()


def test_a_password_in_the_tracking_uri_never_reaches_the_screen(env, capsys):
    argv = _search(env, None)
    argv[argv.index("--mlflow-uri") + 1] = f"http://mlflow:hunter2@127.0.0.1:{free_port()}"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and "http://mlflow:***@127.0.0.1" in err and "hunter2" not in err, err
