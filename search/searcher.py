"""Optuna inside Ray Tune: the searcher that proposes every trial, and what of it is saved.

Ray Tune pickles its searcher twice: with the Tuner (``tuner.pkl``, when the Tuner is built) and
with each experiment checkpoint (``searcher-state-*.pkl``, through :meth:`Searcher.save`). Ray's
own :class:`OptunaSearch` pickles its whole ``__dict__``, the Optuna sampler object included, and
that breaks whenever a sampler holds something pickle cannot carry: optuna 5.1.0 added
``threading.Lock`` to its genetic samplers (``BaseGASampler._thread_lock``: NSGA-II, the
multi-objective search's), so ``pickle.dumps(NSGAIISampler())`` raises ``TypeError: cannot pickle
'_thread.lock'``. The saved state here is only what restoring needs: the study's storage and name,
the sampler's settings (it is rebuilt from them), and which Optuna trial each Tune trial is.

A driver killed after a trial finished and before Ray's next experiment checkpoint leaves a
FINISHED MLflow run whose trial the restored searcher never proposed. Inside :func:`replaying`,
a restored searcher proposes those trials' values first (Optuna enqueues them), so the resumed
search meets each such run again and takes its recorded result instead of running a stranger.
"""
from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from ray.tune.search.optuna import OptunaSearch

from .config import SearchConfig

#: The samplers a search can use, by the name its settings give.
SAMPLERS = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler}


@dataclass(frozen=True)
class SamplerSettings:
    """What builds a search's sampler: its kind (a key of :data:`SAMPLERS`), seed and options."""

    kind: str
    seed: int | None
    options: tuple[tuple[str, Any], ...] = ()

    def build(self, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
        """A new sampler. A restored search (``trials_so_far`` > 0) draws from a stream of its own,
        derived from the seed and the trial count, so it does not repeat the first trials' draws;
        the trials themselves stay in the study, which is what Optuna learns from."""
        seed = self.seed
        if seed is not None and trials_so_far:
            seed = int(np.random.SeedSequence([seed, trials_so_far]).generate_state(1)[0])
        return SAMPLERS[self.kind](seed=seed, **dict(self.options))


def sampler_settings(search: SearchConfig) -> SamplerSettings:
    """Seeded TPE, or NSGA-II for the multi-objective Pareto search."""
    if search.multi_objective:
        return SamplerSettings("nsga2", search.search_seed,
                               (("population_size", max(4, min(50, search.trials // 4))),))
    # A third of a small budget explores at random before TPE models the rest.
    return SamplerSettings("tpe", search.search_seed, (("n_startup_trials", max(4, min(10, search.trials // 3))),))


#: (Tune trial id, Optuna point) of every finished trial, while :func:`replaying` is active.
_REPLAY: list[tuple[str, dict[str, Any]]] = []


@contextlib.contextmanager
def replaying(finished: Sequence[tuple[str, dict[str, Any]]]) -> Iterator[None]:
    """While active, a searcher restored from Ray's saved state (``Searcher.restore``, which Ray
    calls when the restored Tuner starts) first proposes the points of the finished trials its
    state does not know. ``finished``: (Tune trial id, point in Optuna's form), in start order."""
    _REPLAY[:] = list(finished)
    try:
        yield
    finally:
        _REPLAY.clear()


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that gives Optuna ``min_clean_acc`` as a constraint (feasible when <= 0), and
    saves only what restores it (the module's docstring says why).

    TPE and NSGA-II then prefer feasible trials; the objective itself is left untouched.
    """

    def __init__(self, *args: Any, settings: SamplerSettings, min_clean_acc: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, sampler=settings.build(), **kwargs)
        self.sampler_settings = settings
        self.min_clean_acc = min_clean_acc

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if self.min_clean_acc is not None and ot_trial is not None and result and "clean_acc" in result:
            ot_trial.set_constraint("min_clean_acc", self.min_clean_acc - float(result["clean_acc"]))
        super().on_trial_complete(trial_id, result=result, error=error)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        study = state.pop("_ot_study")
        # Optuna trials point at their study, and the study at its sampler: keep their ids only.
        state.update(_sampler=None, _ot_trials={k: t._trial_id for k, t in self._ot_trials.items()},
                     _study=None if study is None else (study._storage, study.study_name))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        study, trial_ids = state.pop("_study"), state.pop("_ot_trials")
        self.__dict__.update(state, _ot_study=None, _ot_trials={})
        if study is None:
            return
        storage, study_name = study
        finished = len(storage.get_all_trials(storage.get_study_id_from_name(study_name), deepcopy=False))
        self._sampler = self.sampler_settings.build(trials_so_far=finished)
        self._ot_study = optuna.load_study(study_name=study_name, storage=storage, sampler=self._sampler,
                                           pruner=optuna.pruners.NopPruner())
        self._ot_trials = {k: optuna.trial.Trial(self._ot_study, i) for k, i in trial_ids.items()}

    # Ray's save and restore copy ``__dict__`` itself; these go through the state above.
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))
        # The trials finished after this state was saved: Ray lost them, MLflow holds their results.
        for trial_id, point in _REPLAY:
            if trial_id not in self._ot_trials and self._ot_study is not None:
                self._ot_study.enqueue_trial(point)


def make_searcher(search: SearchConfig) -> ConstrainedOptunaSearch:
    """The search's Optuna searcher: its space, sampler, first points, objectives and constraint."""
    metrics, modes = zip(*search.objectives)
    return ConstrainedOptunaSearch(
        space=search.space.define_by_run(search.base), settings=sampler_settings(search),
        points_to_evaluate=[search.space.encode_point(p, search.base) for p in search.points_to_evaluate] or None,
        metric=list(metrics) if search.multi_objective else metrics[0],
        mode=list(modes) if search.multi_objective else modes[0], min_clean_acc=search.min_clean_acc)
