"""End-to-end searches on a real local Ray, logged to a real MLflow server on 127.0.0.1."""
from __future__ import annotations

import pickle
import shutil

import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from ray import tune
from ray.tune.experiment import Trial

from search import tracking
from search.trial_logger import TrialLogger
from search.cli import main
from search.ranking import pareto_front
from smoothblock import Config
from smoothblock.checkpoint import load_checkpoint, read_provenance

from .conftest import fails_in_one_line
from .search_fixtures import local_ray, tiny_checkpoint  # noqa: F401

pytestmark = pytest.mark.integration


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _posthoc(tmp_path, image_folder, **changes):
    data = {"trainable": "posthoc", "model": str(tiny_checkpoint(tmp_path / "m.safetensors", image_folder)),
            "trials": 4, "val_images": 8, "chunk_images": 4, "audit_top": 2, "audit_images": 12,
            "eot_iter": 2, "eot_steps": 2,
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
    captured = capsys.readouterr()
    out = captured.out
    assert "search posthoc-e2e: 4 trials finished, 0 failed" in out and "robust_acc" in out
    # One line per finished trial and the summary; Ray's boxed tables only with --verbose.
    lines = [line for line in out.splitlines() if line.startswith("trial ")]
    assert len(lines) == 4 and all("robust_acc" in line and "clean_acc" in line for line in lines), out
    assert "╭" not in out + captured.err and "Trial status" not in out + captured.err
    assert len(out.splitlines()) <= 4 + 20, out
    assert "undefended model on the same images" in out and "audit of the 2 finalists" in out
    assert "robust_gain (95% CI)" in out and "clean_cost (95% CI)" in out

    client, parent, children = _runs(mlflow_server, "posthoc-e2e")
    assert parent.info.status == "FINISHED" and parent.data.params["attacks"] == '["transfer", "pgd", "eot_pgd"]'
    assert parent.data.metrics["trials_finished"] == 4
    # The reference point: the same model, images, attacks and seeds without a defense.
    undefended = parent.data.metrics
    assert 0 <= undefended["undefended_robust_acc"] <= undefended["undefended_pgd_acc"] <= undefended["undefended_clean_acc"] <= 1
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert len({c.data.tags["ray.trial_id"] for c in children}) == 4
    for child in children:
        params, metrics = child.data.params, child.data.metrics
        assert params["method"] in ("smoothblock", "dropblock") and 0.5 <= float(params["keep_prob"]) <= 0.9
        # The worst case is below every attack's accuracy, and the scheduler stops after a chunk or none.
        assert 0 <= metrics["robust_acc"] <= min(metrics["pgd_acc"], metrics["transfer_acc"]) <= metrics["clean_acc"] <= 1
        assert metrics["images"] == (4 if "smoothblock.stopped_early" in child.data.tags else 8)
        assert len(client.get_metric_history(child.info.run_id, "robust_acc")) == metrics["images"] // 4
        assert metrics["passes"] == int(params["ensemble"])
        # Its gain over the undefended base on the same images, with the paired interval.
        assert metrics["robust_gain"] == pytest.approx(metrics["robust_acc"] - undefended["undefended_robust_acc"]) \
            if metrics["images"] == 8 else True
        assert metrics["robust_gain_low"] <= metrics["robust_gain"] <= metrics["robust_gain_high"]
        assert metrics["clean_cost_low"] <= metrics["clean_cost"] <= metrics["clean_cost_high"]
        assert metrics["identity"] == 0.0  # positions 1-2, keep prob <= 0.9: every defense changes outputs
        cfg = Config.from_yaml(child.data.tags[tracking.CONFIG_TAG])
        assert cfg.keep_prob == float(params["keep_prob"]) and cfg.data == str(image_folder)
        # Named by its defense for the compare view, tagged with the search and the code.
        assert child.info.run_name == f"{cfg.method} p{cfg.positions[0]} b{cfg.block_size} k{cfg.keep_prob:.2f} x{cfg.ensemble}"
        assert child.data.tags["smoothblock.search"] == "posthoc-e2e" and child.data.tags["smoothblock.commit"]
    assert parent.data.tags["smoothblock.trainable"] == "posthoc"
    # Optuna's plots of the study (PNG and HTML) and the robust/clean scatter on the parent run; an
    # accuracy table on each child.
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/param_importances.png", "plots/parallel_coordinate.html",
            "plots/tradeoff.png", "plots/gains.png"} <= plots and len(plots) >= 5, plots
    assert all("accuracy_by_attack.json" in {a.path for a in client.list_artifacts(c.info.run_id)} for c in children)
    assert len({c.data.params["keep_prob"] for c in children}) == 4  # Optuna proposed, not repeated

    # The report, from MLflow alone, says what the search printed when it ended.
    report_md = tmp_path / "report.md"
    assert main(["report", "posthoc-e2e", "--mlflow-uri", mlflow_server, "-o", str(report_md)]) == 0
    reported = report_md.read_text()
    for line in out.splitlines():
        if line.startswith(("| ", "audit of", "undefended model", "search posthoc-e2e:")):
            assert line in reported, line

    # The same name again is refused; the first search is untouched.
    fails_in_one_line(capsys, main, argv, "already exists")

    # The two best complete trials were audited; the audited figure is the worst case over more attacks.
    audited = [c for c in children if "audited_robust_acc" in c.data.metrics]
    assert len(audited) == 2 and all(c.data.tags["obfuscated"] in ("true", "false") for c in audited)
    for child in audited:
        metrics = child.data.metrics
        assert metrics["audit_images"] == 12 and 0 <= metrics["audited_robust_acc"] <= metrics["audit_clean_acc"]
        assert {"audit_autoattack_rand_broke", "audit_square_broke", "audit_unbounded_acc"} <= set(metrics)
        # On the fresh images, against the base audited on the same ones.
        assert metrics["audit_robust_gain"] == pytest.approx(
            metrics["audited_robust_acc"] - parent.data.metrics["undefended_audit_robust_acc"])
        assert metrics["audit_robust_gain_low"] <= metrics["audit_robust_gain"] <= metrics["audit_robust_gain_high"]
    assert "fresh validation images, which no trial saw" in out
    assert "no defense adds robustness distinguishable from zero" in out or "the best defense adds" in out

    best = tmp_path / "best.yaml"
    assert main(["export", "posthoc-e2e", "--mlflow-uri", mlflow_server, "-o", str(best)]) == 0
    exported = Config.load(best)
    top = max(audited, key=lambda c: (c.data.metrics["audited_robust_acc"], c.data.metrics["clean_acc"],
                                      -c.data.metrics["passes"]))
    assert exported.keep_prob == float(top.data.params["keep_prob"]) and exported.method == top.data.params["method"]
    record = yaml.safe_load(best.read_text())
    assert record["robust_acc"] == round(top.data.metrics["audited_robust_acc"], 4)
    assert record["audit"]["audited"] and record["audit"]["images"] == 12
    assert record["audit"]["obfuscated"] == (top.data.tags["obfuscated"] == "true")
    # A post-hoc winner: the scored model itself (the trained weights with the defense), and a
    # fine-tune of those weights with the defense in training too.
    assert exported.init_from == str(tmp_path / "m.safetensors") and exported.defense_at == "both"
    assert exported.epochs == 30 and exported.lr == 0.01
    scored_cfg, scored = load_checkpoint(tmp_path / "best.safetensors")
    assert (scored_cfg.method, scored_cfg.keep_prob, scored_cfg.defense_at) == (exported.method, exported.keep_prob, "test")
    _, base_weights = load_checkpoint(tmp_path / "m.safetensors")
    assert all(torch.equal(scored[k], base_weights[k]) for k in base_weights)
    assert "defense_from" in read_provenance(tmp_path / "best.safetensors")
    assert main(["export", "posthoc-e2e", "--mlflow-uri", mlflow_server, "--top", "2", "-o", str(best)]) == 0
    assert (tmp_path / "best-1.yaml").is_file() and (tmp_path / "best-2.yaml").is_file()
    assert (tmp_path / "best-2.safetensors").is_file()
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
    front = pareto_front([dict(c.data.metrics) for c in children], "robust_acc")
    assert main(["export", "pareto-e2e", "--pareto", "--mlflow-uri", mlflow_server,
                 "-o", str(tmp_path / "front.yaml")]) == 0
    written = sorted(tmp_path.glob("front*.yaml"))
    assert len(written) == len(front) >= 1
    assert {Config.load(path).ensemble for path in written} <= {int(c.data.params["ensemble"]) for c in children}


def test_an_l2_search_runs_end_to_end_in_the_l2_ball(tmp_path, image_folder, mlflow_server, local_ray, capsys):
    config = _posthoc(tmp_path, image_folder, trials=2, audit_top=1, scheduler="fifo")
    assert main(["search", "--config", config, "--name", "l2-e2e", "--norm", "l2", "--eps", "0.5",
                 "--mlflow-uri", mlflow_server, "--storage", str(tmp_path / "results")]) == 0
    client, parent, children = _runs(mlflow_server, "l2-e2e")
    assert parent.data.params["norm"] == "l2" and float(parent.data.params["eps"]) == 0.5
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    best = tmp_path / "best.yaml"
    assert main(["export", "l2-e2e", "--mlflow-uri", mlflow_server, "-o", str(best)]) == 0
    record = yaml.safe_load(best.read_text())
    assert record["audit"]["search"]["threat_model"] == "L2 0.5"
    assert record["audit"]["threat_model"].startswith("L2 0.5")
    # FGSM has no L2 form: refused in one line before anything starts.
    capsys.readouterr()
    fails_in_one_line(capsys, main, ["search", "--config", config, "--name", "l2-fgsm", "--norm", "l2",
                                     "--attacks", "fgsm", "pgd", "--mlflow-uri", mlflow_server,
                                     "--storage", str(tmp_path / "results")], "attack fgsm has no l2 form")


def test_training_search_reports_every_epoch_checkpoints_and_asha_stops_trials(tmp_path, image_folder,
                                                                              mlflow_server, local_ray, capsys):
    config = _write(tmp_path / "train.yaml", {
        "trainable": "train", "model": None, "trials": 5, "val_images": 10, "attacks": ["fgsm", "transfer"],
        "audit_top": 1, "audit_images": 10, "eot_iter": 2, "eot_steps": 2,
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
    # The best trial that trained to the end was audited, from its last checkpoint.
    audited = [c for c in children if "audited_robust_acc" in c.data.metrics]
    assert len(audited) == 1 and epochs[audited[0].info.run_id] == 3
    assert audited[0].data.metrics["audit_images"] == 10 and audited[0].data.tags["obfuscated"] in ("true", "false")
    assert audited[0].data.metrics["audited_robust_acc"] <= audited[0].data.metrics["robust_acc"] + 0.15


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


@pytest.mark.timeout(300)
def test_a_search_killed_after_rays_first_file_and_before_its_first_state_resumes(tmp_path, image_folder,
                                                                                  mlflow_server, local_ray):
    """Ray writes tuner.pkl before the first experiment state; a driver killed between the two left
    a folder Tuner.restore accepts and then cannot go on from (it waited 600 s, then ended with the
    trials it had). The same files, made by killing a search's record after the fact: two trials
    finished in MLflow, two never started, Ray's experiment state not yet written."""
    storage, name = tmp_path / "results", "early-kill"
    argv = ["--mlflow-uri", mlflow_server, "--storage", str(storage)]
    assert main(["search", "--config", _posthoc(tmp_path, image_folder), "--name", name, *argv]) == 0
    client, parent, children = _runs(mlflow_server, name)
    kept, lost = children[:2], children[2:]
    for run in lost:
        client.delete_run(run.info.run_id)
    client.update_run(parent.info.run_id, status="RUNNING")
    folder = storage / name
    for path in folder.iterdir():
        if path.name not in ("tuner.pkl", "smoothblock-search.yaml", "smoothblock-search.json"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    assert main(["search", "--resume", name, *argv]) == 0
    ray_trials = tune.ExperimentAnalysis(str(folder)).trials
    assert len(ray_trials) == 4 and {t.status for t in ray_trials} == {"TERMINATED"}
    _, parent, children = _runs(mlflow_server, name)
    assert parent.info.status == "FINISHED" and {c.info.status for c in children} == {"FINISHED"}
    assert sorted(c.data.tags["ray.trial_id"] for c in children) == sorted(t.trial_id for t in ray_trials)
    after = {c.info.run_id: c for c in children}
    for run in kept:  # adopted by the resumed trials with their configuration, not run again
        assert after[run.info.run_id].info.end_time == run.info.end_time


def test_a_fast_trial_costs_the_driver_three_requests_and_its_run_holds_every_report(mlflow_server):
    client = MlflowClient(mlflow_server)
    experiment_id, parent_id = tracking.start_search_run(client, "three-requests", "trainable: posthoc\n", {})
    logger = TrialLogger(mlflow_server, experiment_id, parent_id, Config())
    calls = []
    for name in ("search_runs", "create_run", "log_batch", "set_terminated", "set_tag", "log_text", "get_metric_history"):
        method = getattr(logger.client, name)
        setattr(logger.client, name, lambda *a, _m=method, _n=name, **k: calls.append(_n) or _m(*a, **k))
    for i in range(2):
        trial = Trial("posthoc_trial", config={"keep_prob": 0.7 + i / 10}, trial_id=f"fast{i:04d}", stub=True)
        logger.on_trial_start(0, [trial], trial)
        for step in (1, 2, 3):
            result = {"training_iteration": step, "time_total_s": 0.1 * step, "robust_acc": 0.1 * step}
            logger.on_trial_result(0, [trial], trial, result)
        logger.on_trial_complete(0, [trial], trial)
    logger.flush()
    # The search's earlier runs are read once; then each trial: its run, one write, its end.
    assert calls == ["search_runs", "create_run", "log_batch", "set_terminated", "create_run", "log_batch",
                     "set_terminated"]
    run = tracking.trial_run(client, experiment_id, parent_id, "fast0000")
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "robust_acc")]
    assert sorted(history) == [(1, 0.1), (2, 0.2), (3, pytest.approx(0.3))] and run.info.status == "FINISHED"
    assert run.data.params["keep_prob"] == "0.7" and Config.from_yaml(run.data.tags[tracking.CONFIG_TAG]).keep_prob == 0.7


def test_a_failed_write_keeps_its_params_and_reports_for_the_next(mlflow_server, monkeypatch):
    import search.trial_logger

    monkeypatch.setattr(search.trial_logger, "FLUSH_SECONDS", 0.0)  # every report is written as it comes
    client = MlflowClient(mlflow_server)
    experiment_id, parent_id = tracking.start_search_run(client, "write-fails", "trainable: train\n", {})
    trial = Trial("training_trial", config={"keep_prob": 0.7}, trial_id="fails0001", stub=True)
    logger = TrialLogger(mlflow_server, experiment_id, parent_id, Config())
    logger.on_trial_start(0, [trial], trial)
    real, failures = logger.client.log_batch, []

    def once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise MlflowException("the tracking server is away")
        return real(*args, **kwargs)

    logger.client.log_batch = once
    logger.on_trial_result(0, [trial], trial, {"training_iteration": 1, "time_total_s": 1.0, "train_loss": 2.0})
    # The first write has failed (a warning; the driver goes on).
    assert failures and not client.get_metric_history(logger.run_id(trial), "train_loss")
    logger.on_trial_result(0, [trial], trial, {"training_iteration": 2, "time_total_s": 2.0, "train_loss": 1.5})
    logger.on_trial_complete(0, [trial], trial)
    logger.flush()
    run = tracking.trial_run(client, experiment_id, parent_id, "fails0001")
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(history) == [(1, 2.0), (2, 1.5)] and run.data.params["keep_prob"] == "0.7"
    assert run.info.status == "FINISHED"


def test_a_step_reported_again_is_logged_once(mlflow_server, monkeypatch):
    """A trial restarted from an older checkpoint than MLflow saw (the driver died between the two),
    or from scratch by a retry, reports its first steps again: each step keeps one value."""
    import search.trial_logger

    # Training epochs come more than FLUSH_SECONDS apart: each report is written when it comes.
    monkeypatch.setattr(search.trial_logger, "FLUSH_SECONDS", 0.0)
    client = MlflowClient(mlflow_server)
    experiment_id, parent_id = tracking.start_search_run(client, "steps-once", "trainable: train\n", {})
    trial = Trial("training_trial", config={"keep_prob": 0.7}, trial_id="steps0001", stub=True)
    before = TrialLogger(mlflow_server, experiment_id, parent_id, Config())
    before.on_trial_start(0, [trial], trial)
    before.on_trial_result(0, [trial], trial, {"training_iteration": 1, "time_total_s": 1.0, "train_loss": 2.0})
    before.on_trial_result(0, [trial], trial, {"training_iteration": 2, "time_total_s": 2.0, "train_loss": 1.5})
    before.on_trial_result(0, [trial], trial, {"training_iteration": 1, "time_total_s": 1.1, "train_loss": 2.1})
    # The driver dies; a new one (a new callback, as Tuner.restore unpickles it) finds the run by tag.
    after = pickle.loads(pickle.dumps(before))
    for step, loss in ((1, 2.2), (2, 1.6), (3, 1.2)):
        after.on_trial_result(0, [trial], trial, {"training_iteration": step, "time_total_s": float(step),
                                                  "train_loss": loss})
    after.on_trial_complete(0, [trial], trial)
    after.flush()
    (run,) = tracking.child_runs(client, experiment_id, parent_id)
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(history) == [(1, 2.0), (2, 1.5), (3, 1.2)] and run.info.status == "FINISHED"


@pytest.mark.parametrize("made", ["configuration", "experiment", "parent run"])
def test_a_search_killed_while_launching_resumes(tmp_path, image_folder, mlflow_server, local_ray, made):
    """The launch writes the configuration, then the MLflow experiment, then its parent run: a driver
    killed after any of those leaves a search that --resume completes (not one that can neither
    resume nor launch again under its name)."""
    storage, name = tmp_path / "results", f"launch-kill-{made.replace(' ', '-')}"
    config = _posthoc(tmp_path, image_folder, trials=2)
    argv = ["--mlflow-uri", mlflow_server, "--storage", str(storage)]
    (storage / name).mkdir(parents=True)
    (storage / name / "smoothblock-search.yaml").write_text(yaml.safe_dump({**yaml.safe_load(open(config)), "name": name}))
    client = MlflowClient(mlflow_server)
    if made != "configuration":
        experiment_id = client.create_experiment(name, tags={"smoothblock.role": "search"})
    if made == "parent run":
        client.create_run(experiment_id, run_name=name, tags={"smoothblock.role": "search"})
    assert main(["search", "--resume", name, *argv]) == 0
    client, parent, children = _runs(mlflow_server, name)
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert {c.info.status for c in children} == {"FINISHED"}
