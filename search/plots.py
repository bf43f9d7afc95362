"""The search's pictures, made from MLflow alone and logged back to it.

On the parent run (``plots/``): Optuna's own visualisations of the search's study (optimisation
history, parameter importances, parallel coordinates, slices, contours; the Pareto front for a
multi-objective search), each as PNG (matplotlib) and HTML (plotly), and a scatter of every trial's
robust against clean accuracy with the undefended model and the audited finalists marked, and every
trial's gain over the undefended model with its paired 95% interval, sorted (``gains.png``). On each
child run: its accuracy per attack as an MLflow table and, where FGSM ran, accuracy against eps.

The study is rebuilt from the child runs: each finished trial's sampled values (its
``smoothblock.sampled`` tag) are replayed through the search space's own define-by-run function,
so the distributions are the search's, and the trial is told its recorded objective(s). That works
for a search that ran on a cluster, and after a resume.
"""
from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402

from smoothblock.attacks import metric_name, metric_names  # noqa: E402
from smoothblock.stats import interval_names  # noqa: E402

from . import tracking  # noqa: E402
from .config import SearchConfig  # noqa: E402

log = logging.getLogger(__name__)

#: Optuna's plots made for every search: (name, function name in optuna.visualization[.matplotlib]).
STUDY_PLOTS = (("optimization_history", "plot_optimization_history"), ("param_importances", "plot_param_importances"),
               ("parallel_coordinate", "plot_parallel_coordinate"), ("slice", "plot_slice"),
               ("contour", "plot_contour"))
#: The contour matrix shows this many of the most important parameters: one panel per pair, so all
#: of a space's eight would be 64 panels (unreadable, and most of a search's plotting time).
CONTOUR_PARAMS = 3


def rebuild_study(search: SearchConfig, runs: list) -> optuna.Study:
    """An in-memory Optuna study holding the search's finished trials, in the order they started."""
    metrics, modes = zip(*search.objectives)
    directions = ["maximize" if mode == "max" else "minimize" for mode in modes]
    study = optuna.create_study(directions=directions, sampler=optuna.samplers.RandomSampler(seed=0))
    searched = {p.name for p in search.space.searched}
    define = search.space.define_by_run(search.base)
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        values = [run.data.metrics.get(m) for m in metrics]
        sampled = run.data.tags.get(tracking.SAMPLED_TAG)
        if run.info.status != "FINISHED" or sampled is None or any(v is None for v in values):
            continue
        point = {k: v for k, v in json.loads(sampled).items() if k in searched}
        try:
            study.enqueue_trial(search.space.encode_point(point, search.base))
        except Exception as exc:  # a trial the space no longer holds: left out of the pictures
            log.warning("trial %s left out of the study: %s", run.info.run_name, exc)
            continue
        trial = study.ask()
        define(trial)
        study.tell(trial, values if len(values) > 1 else values[0])
    return study


def study_figures(search: SearchConfig, study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's plots of ``study`` as PNG and HTML in ``folder``; a plot Optuna cannot draw for
    this study (too few trials, one parameter) is left out."""
    import optuna.visualization as interactive
    import optuna.visualization.matplotlib as static

    written = []
    objectives = [m for m, _ in search.objectives]
    plots = list(STUDY_PLOTS) + ([("pareto_front", "plot_pareto_front")] if search.multi_objective else [])
    target: dict[str, Any] = {}
    if search.multi_objective:  # one objective at a time: the search's robust accuracy
        target = {"target": lambda t: t.values[1], "target_name": objectives[1]}
    for name, function in plots:
        kwargs = dict(target) if name != "pareto_front" else {"target_names": objectives}
        if name == "contour":
            kwargs["params"] = top_params(study, CONTOUR_PARAMS, target.get("target"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
                axes = getattr(static, function)(study, **kwargs)
                figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
                figure.set_size_inches(max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 5))
                figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
                plt.close(figure)
                written.append(folder / f"{name}.png")
                getattr(interactive, function)(study, **kwargs).write_html(folder / f"{name}.html",
                                                                            include_plotlyjs="cdn")
                written.append(folder / f"{name}.html")
        except Exception as exc:  # noqa: BLE001 - Optuna raises ValueError/RuntimeError/ImportError
            log.info("plot %s not drawn: %s", name, exc)
    return written


def top_params(study: optuna.Study, n: int, target=None) -> list[str] | None:
    """The ``n`` parameters with the largest fANOVA importance for ``target`` (None: Optuna's own
    choice, every parameter, when the importances cannot be computed)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ranked = list(optuna.importance.get_param_importances(study, target=target))
    except Exception:  # noqa: BLE001 - too few trials, or nothing varied
        return None
    return ranked[:n] if len(ranked) >= 2 else None


def tradeoff_figure(search: SearchConfig, runs: list, parent_metrics: dict[str, float], path: Path) -> Path:
    """Every finished trial's robust against clean accuracy; the undefended model and the audited
    finalists (their audited figure) marked."""
    metric = search.metric
    fig, ax = plt.subplots(figsize=(6, 4.5), layout="constrained")
    done = [r for r in runs if r.info.status == "FINISHED" and metric in r.data.metrics]
    ax.scatter([r.data.metrics["clean_acc"] for r in done], [r.data.metrics[metric] for r in done], s=18,
               color="C0", label="trials")
    audited = [r for r in done if tracking.AUDITED in r.data.metrics]
    if audited:
        ax.scatter([r.data.metrics["clean_acc"] for r in audited], [r.data.metrics[tracking.AUDITED] for r in audited],
                   s=60, facecolors="none", edgecolors="C3", label="audited finalists (audited figure)")
    if "undefended_clean_acc" in parent_metrics:
        ax.scatter([parent_metrics["undefended_clean_acc"]], [parent_metrics.get(f"undefended_{metric}", 0.0)],
                   marker="*", s=120, color="k", label="undefended model")
    ax.set_xlabel("clean_acc (validation)")
    ax.set_ylabel(f"{metric} (validation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"search {search.name}: robust against clean accuracy", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _gain_bars(ax, x: list, metrics: list[dict], prefix: str, **style) -> None:
    """``prefix + robust_gain`` of each run's metrics at ``x``, in points, with its interval
    (``_low``/``_high``) as asymmetric error bars."""
    names = [prefix + key for key in interval_names("robust_gain")]
    gain = [100 * v[names[0]] for v in metrics]
    low = [g - 100 * v[names[1]] for g, v in zip(gain, metrics)]
    high = [100 * v[names[2]] - g for g, v in zip(gain, metrics)]
    ax.errorbar(x, gain, yerr=[low, high], lw=1, capsize=2, **style)


def gain_figure(search: SearchConfig, runs: list, path: Path) -> Path | None:
    """Every finished trial's ``robust_gain`` over the undefended base with its paired 95% interval,
    sorted, on the search's images; an audited finalist's gain on the fresh images beside it. None
    when no trial has a gain (a search without an undefended base)."""
    done = [r for r in runs if r.info.status == "FINISHED" and "robust_gain_low" in r.data.metrics]
    if not done:
        return None
    done.sort(key=lambda r: r.data.metrics["robust_gain"])
    m = [r.data.metrics for r in done]
    x = range(len(done))
    # Optuna's matplotlib plots, drawn before, switch the global style to ggplot (its larger labels
    # cut this one's y label off): draw in matplotlib's default style.
    with plt.style.context("default"):
        fig, ax = plt.subplots(figsize=(max(6.0, 0.16 * len(done) + 2), 4.5), layout="constrained")
        _gain_bars(ax, list(x), m, "", fmt="o", ms=3, color="C0", label=f"search images ({search.val_images})")
        fresh = [(i, v) for i, v in zip(x, m) if f"{tracking.AUDIT_PREFIX}robust_gain_low" in v]
        if fresh:
            _gain_bars(ax, [i + 0.3 for i, _ in fresh], [v for _, v in fresh], tracking.AUDIT_PREFIX,
                       fmt="s", ms=4, color="C3",
                       label=f"audited finalists, fresh images ({search.audit_images}), audit attacks")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(list(x), [r.info.run_name or r.info.run_id[:8] for r in done], rotation=90, fontsize=6)
        ax.set_ylabel("robust_gain over the undefended model (points)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
        ax.set_title(f"search {search.name}: each trial's gain with its paired 95% interval", fontsize=10)
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def trial_artifacts(client, search: SearchConfig, run, folder: Path) -> None:
    """A child run's accuracy per attack (an MLflow table) and, where FGSM ran, against eps."""
    metrics = run.data.metrics
    names = [*metric_names(search.attacks, search.attack_settings()), "robust_acc"]
    accuracies = {name: metrics[name] for name in names if name in metrics}
    if accuracies:
        client.log_table(run.info.run_id, data={"metric": list(accuracies), "accuracy": list(accuracies.values())},
                         artifact_file="accuracy_by_attack.json")
    eps = sorted(e for e in search.fgsm_eps if metric_name("fgsm", eps=e) in metrics)
    if eps:
        fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
        ax.plot(eps, [100 * metrics[metric_name("fgsm", eps=e)] for e in eps], marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xticks(eps, [str(e) for e in eps])
        ax.set_xlabel("FGSM eps (/255)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        path = folder / f"{run.info.run_id}-fgsm.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        client.log_artifact(run.info.run_id, str(path), "plots")


def log_search_plots(client, search: SearchConfig, experiment_id: str, parent_id: str) -> list[str]:
    """Draw every picture from MLflow and log it: the parent's under ``plots/`` (replacing those of
    an earlier, interrupted run of the search), each child's beside its metrics. Returns the
    parent's artifact names."""
    runs = tracking.child_runs(client, experiment_id, parent_id)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one warning per plot and parameter otherwise
    # Categorical axes of numbers-as-strings (positions "1+2") are meant: not a warning per plot.
    logging.getLogger("matplotlib.category").setLevel(logging.ERROR)
    try:
        return _log_plots(client, search, parent_id, runs)
    finally:
        optuna.logging.set_verbosity(level)


def _log_plots(client, search: SearchConfig, parent_id: str, runs: list) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        study = rebuild_study(search, runs)
        paths = study_figures(search, study, folder) if len(study.trials) >= 2 else []
        paths.append(tradeoff_figure(search, runs, client.get_run(parent_id).data.metrics, folder / "tradeoff.png"))
        gains = gain_figure(search, runs, folder / "gains.png")
        paths += [gains] if gains else []
        parent = folder / "plots"
        parent.mkdir()
        for path in paths:
            path.rename(parent / path.name)
        client.log_artifacts(parent_id, str(parent), "plots")
        for run in runs:
            if run.info.status == "FINISHED":
                trial_artifacts(client, search, run, folder)
    return [f"plots/{p.name}" for p in paths]
