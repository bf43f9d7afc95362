"""End-to-end searches on a real local Ray, logged to a real MLflow server on 127.0.0.1."""
from __future__ import annotations


import pytest
import yaml
from mlflow import MlflowClient

from search.cli import main
from search.export import pareto_front
from smoothblock import Config

from .conftest import fails_in_one_line
from .search_fixtures import local_ray, tiny_checkpoint  # noqa: F401

pytestmark = pytest.mark.slow


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _posthoc(tmp_path, image_folder, **changes):
    data = {"trainable": "posthoc", "model": str(tiny_checkpoint(tmp_path / "m.safetensors", image_folder)),
            "trials": 4, "val_images": 8,
            "base": {"data": str(image_folder), "val_size": 20, "device": "cpu", "bf16": False},
            "space": {"method": ["smoothblock", "dropblock"], "positions": [[1], [2]],
                      "block_size": {"low": 1, "high": 3}, "keep_prob": {"low": 0.5, "high": 0.9},
                      "ensemble": {"low": 1, "high": 2}}}
    data.update(changes)
    return _write(tmp_path / "search.yaml", data)


def _runs(uri, name):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("smoothblock.role") == "search"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return client, parents[0], children


def test_posthoc_search_logs_every_trial_and_exports_a_trainable_config(tmp_path, image_folder, mlflow_server,
                                                                        local_ray, capsys):
    storage = tmp_path / "results"
    argv = ["search", "--config", _posthoc(tmp_path, image_folder), "--name", "posthoc-e2e",
            "--mlflow-uri", mlflow_server, "--storage", str(storage)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "search posthoc-e2e: 4 trials finished, 0 failed" in out and "pgd_acc" in out
    assert "undefended model on the same images" in out

    client, parent, children = _runs(mlflow_server, "posthoc-e2e")
    assert parent.info.status == "FINISHED" and parent.data.params["attack"] == "pgd"
    assert parent.data.metrics["trials_finished"] == 4
    # The reference point: the same model, images, attack and seed without a defense.
    assert 0 <= parent.data.metrics["undefended_pgd_acc"] <= parent.data.metrics["undefended_clean_acc"] <= 1
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert len({c.data.tags["ray.trial_id"] for c in children}) == 4
    for child in children:
        params, metrics = child.data.params, child.data.metrics
        assert params["method"] in ("smoothblock", "dropblock") and 0.5 <= float(params["keep_prob"]) <= 0.9
        assert 0 <= metrics["pgd_acc"] <= metrics["clean_acc"] + 1e-9 <= 1 + 1e-9 and metrics["n"] == 8
        assert metrics["passes"] == int(params["ensemble"])
        artifact = client.download_artifacts(child.info.run_id, "config.yaml", str(tmp_path / child.info.run_id))
        cfg = Config.load(artifact)
        assert cfg.keep_prob == float(params["keep_prob"]) and cfg.data == str(image_folder)
    assert len({c.data.params["keep_prob"] for c in children}) == 4  # Optuna proposed, not repeated

    # The same name again is refused; the first search is untouched.
    fails_in_one_line(capsys, main, argv, "already exists")

    best = tmp_path / "best.yaml"
    assert main(["export", "posthoc-e2e", "--mlflow-uri", mlflow_server, "-o", str(best)]) == 0
    exported = Config.load(best)
    top = max(children, key=lambda c: (c.data.metrics["pgd_acc"], c.data.metrics["clean_acc"], -c.data.metrics["passes"]))
    assert exported.keep_prob == float(top.data.params["keep_prob"]) and exported.method == top.data.params["method"]
    assert main(["export", "posthoc-e2e", "--mlflow-uri", mlflow_server, "--top", "2", "-o", str(best)]) == 0
    assert (tmp_path / "best-1.yaml").is_file() and (tmp_path / "best-2.yaml").is_file()
    # What export writes is what training takes.
    assert main(["train", "--config", str(best), "--epochs", "1", "--batch_size", "16",
                 "--out_dir", str(tmp_path / "final"), "--quiet"]) == 0
    assert (tmp_path / "final" / "model.safetensors").is_file()


def test_a_multi_objective_search_exports_its_pareto_front(tmp_path, image_folder, mlflow_server, local_ray,
                                                          capsys):
    config = _posthoc(tmp_path, image_folder, multi_objective=True, min_clean_acc=0.05)
    assert main(["search", "--config", config, "--name", "pareto-e2e", "--mlflow-uri", mlflow_server,
                 "--storage", str(tmp_path / "results")]) == 0
    assert "Pareto front (validation split, 8 images" in capsys.readouterr().out
    client, parent, children = _runs(mlflow_server, "pareto-e2e")
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    front = pareto_front([dict(c.data.metrics) for c in children], "pgd_acc")
    assert main(["export", "pareto-e2e", "--pareto", "--mlflow-uri", mlflow_server,
                 "-o", str(tmp_path / "front.yaml")]) == 0
    written = sorted(tmp_path.glob("front*.yaml"))
    assert len(written) == len(front) >= 1
    assert {Config.load(path).ensemble for path in written} <= {int(c.data.params["ensemble"]) for c in children}


def test_training_search_reports_every_epoch_checkpoints_and_asha_stops_trials(tmp_path, image_folder,
                                                                              mlflow_server, local_ray, capsys):
    config = _write(tmp_path / "train.yaml", {
        "trainable": "train", "model": None, "trials": 5, "val_images": 20, "attack": "fgsm",
        "max_concurrent_trials": 1, "grace_period": 1, "reduction_factor": 2,
        "base": {"data": str(image_folder), "val_size": 20, "epochs": 3, "batch_size": 16, "device": "cpu",
                 "bf16": False, "method": "smoothblock", "defense_at": "both"},
        "space": {"lr": {"low": 1e-4, "high": 1.0, "log": True}, "keep_prob": {"low": 0.5, "high": 0.9}}})
    assert main(["search", "--config", config, "--name", "train-e2e", "--mlflow-uri", mlflow_server,
                 "--storage", str(tmp_path / "results")]) == 0
    client, parent, children = _runs(mlflow_server, "train-e2e")
    assert len(children) == 5 and {c.info.status for c in children} == {"FINISHED"}
    epochs = {c.info.run_id: len(client.get_metric_history(c.info.run_id, "fgsm_8_acc")) for c in children}
    assert max(epochs.values()) == 3  # the best went the whole way ...
    assert min(epochs.values()) < 3, epochs  # ... and ASHA stopped at least one early
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")]
        assert steps == list(range(1, epochs[child.info.run_id] + 1))
        assert "checkpoint/last.pt" in {a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")}


def test_the_same_search_and_seed_give_the_same_trials_and_metrics(tmp_path, image_folder, mlflow_server, local_ray):
    """One trial at a time, so Optuna sees the results in the same order (with several at once, its
    proposals depend on which trial finishes first; each trial's metrics still do not)."""
    config = _posthoc(tmp_path, image_folder, trials=3, max_concurrent_trials=1)
    outcomes = []
    for name in ("same-1", "same-2"):
        assert main(["search", "--config", config, "--name", name, "--mlflow-uri", mlflow_server,
                     "--storage", str(tmp_path / "results")]) == 0
        _, parent, children = _runs(mlflow_server, name)
        outcomes.append(sorted((sorted(c.data.params.items()),
                                sorted((k, v) for k, v in c.data.metrics.items() if k != "time_total_s"))
                               for c in children))
        outcomes.append({k: v for k, v in parent.data.metrics.items() if k.startswith(("undefended_", "best_"))})
    assert outcomes[0] == outcomes[2] and outcomes[1] == outcomes[3]
    assert len(outcomes[0]) == 3
