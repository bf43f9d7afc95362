"""What a running search prints: one line per finished trial and one progress bar with the time left.

Ray Tune's own per-trial tables (hundreds of lines for the main command's 16 trials), its error
tracebacks and a lost node's state dump are shown only with ``smoothblock search --verbose``; a
failed or retried trial gets one line here saying why (:func:`search.faults.trial_cause`).
"""
from __future__ import annotations

import sys
from typing import Any

from ray import tune
from tqdm import tqdm

from smoothblock import Config
from trainables.params import trial_config

from .faults import trial_cause
from .tracking import run_label, trial_error


class TrialLines(tune.Callback):
    """Tune callback: ``trial ID: DEFENSE  robust_acc R  clean_acc C  S s`` when a trial ends, above a
    bar of finished trials out of ``total`` (tqdm's estimate of the time left)."""

    def __init__(self, base: Config, total: int, metric: str, max_iterations: int | None = None) -> None:
        self.base = base
        self.total = total
        self.metric = metric
        self.max_iterations = max_iterations
        self._bar: tqdm | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment state
        return {**self.__dict__, "_bar": None}

    @property
    def bar(self) -> tqdm:
        if self._bar is None:
            self._bar = tqdm(total=self.total, desc="trials", unit="trial", file=sys.stderr, dynamic_ncols=True)
        return self._bar

    def setup(self, **info) -> None:
        self.bar.refresh()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._line(trial, "")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._line(trial, f"failed: {trial_cause(trial_error(trial))}")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        # Ray's own report of it (the traceback, a node's state dump) stays out of the terminal.
        label = run_label(trial_config(self.base, trial.config))
        self.bar.write(f"trial {trial.trial_id}: {label}  (retried: {trial_cause(trial_error(trial))})", file=sys.stdout)

    def on_experiment_end(self, trials, **info) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _line(self, trial, status: str) -> None:
        result = trial.last_result or {}
        label = run_label(trial_config(self.base, trial.config))
        parts = [f"trial {trial.trial_id}: {label}"]
        if not status and self.metric in result:
            parts += [f"{self.metric} {result[self.metric]:.4f}", f"clean_acc {result.get('clean_acc', float('nan')):.4f}"]
            reached = result.get("training_iteration")
            if self.max_iterations and reached is not None and reached < self.max_iterations:
                status = f"stopped early, after {reached} of {self.max_iterations} reports"
        if "time_total_s" in result:
            parts.append(f"{result['time_total_s']:.0f} s")
        if status:
            parts.append(f"({status})")
        self.bar.write("  ".join(parts), file=sys.stdout)
        self.bar.update(1)
