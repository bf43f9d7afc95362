"""The searcher's saved state, without a Ray cluster: Ray Tune pickles the searcher with the Tuner
and at every experiment checkpoint, and restores it on ``--resume``. Both samplers (TPE, and
NSGA-II, which holds a lock since optuna 5.1.0) must survive that and go on proposing."""
from __future__ import annotations

import pickle

import pytest
from ray import cloudpickle

from search.config import compose
from search.searcher import make_searcher, replaying


def _run(searcher, ids: range, clean: float = 0.5) -> list[dict]:
    """Propose and finish one Tune trial per id; their configurations."""
    proposed = []
    for i in ids:
        config = searcher.suggest(f"t{i}")
        proposed.append(config)
        searcher.on_trial_complete(f"t{i}", result={"robust_acc": 0.01 * i, "clean_acc": clean, "passes": 1,
                                                    "training_iteration": 1})
    return proposed


@pytest.mark.parametrize("multi_objective", [False, True], ids=["tpe", "nsga2"])
def test_the_searcher_pickles_and_goes_on_after_a_restore(tmp_path, multi_objective):
    search = compose("posthoc", trials=12, multi_objective=multi_objective, min_clean_acc=0.1,
                     points_to_evaluate=[])
    searcher = make_searcher(search)
    cloudpickle.dumps(searcher)  # as Tune writes tuner.pkl, before any trial
    first = _run(searcher, range(5))
    running = searcher.suggest("t5")  # a trial the driver's death interrupts
    searcher.save(str(tmp_path / "searcher-state.pkl"))

    restored = cloudpickle.loads(cloudpickle.dumps(make_searcher(search)))  # tuner.pkl's copy
    restored.restore(str(tmp_path / "searcher-state.pkl"))
    study = restored._ot_study
    assert len(study.trials) == 6
    assert [t.params for t in study.trials[:5]] == [t.params for t in searcher._ot_study.trials[:5]]
    # The interrupted trial finishes into the restored study, with its constraint.
    restored.on_trial_complete("t5", result={"robust_acc": 0.2, "clean_acc": 0.05, "passes": 1, "training_iteration": 1})
    assert study.trials[5].state.name == "COMPLETE" and study.trials[5].params == searcher._ot_study.trials[5].params
    assert study.trials[5].constraints == {"min_clean_acc": pytest.approx(0.05)}
    assert running is not None
    later = _run(restored, range(6, 10))
    assert len(study.trials) == 10 and all(t.state.name == "COMPLETE" for t in study.trials)
    # A restored sampler draws afresh: it does not replay the first trials' proposals.
    assert later[:4] != first[:4]
    pickle.loads(pickle.dumps(restored))  # and it saves again


def test_a_restored_searcher_first_proposes_the_trials_its_saved_state_lost(tmp_path):
    # The driver saved Ray's state after t0..t2, then t3 finished (MLflow holds it) and it died.
    search = compose("posthoc", trials=12, points_to_evaluate=[])
    searcher = make_searcher(search)
    _run(searcher, range(3))
    searcher.save(str(tmp_path / "searcher-state.pkl"))
    lost = _run(searcher, range(3, 4))[0]
    finished = [(f"t{i}", search.space.encode_point(c, search.base)) for i, c in enumerate(_run(
        make_searcher(search), range(3)))] + [("t3", search.space.encode_point(lost, search.base))]

    restored = cloudpickle.loads(cloudpickle.dumps(make_searcher(search)))
    with replaying(finished):
        restored.restore(str(tmp_path / "searcher-state.pkl"))
    assert restored.suggest("t4") == lost  # t0..t2 are in its state: only t3 comes again
    assert restored.suggest("t5") != lost

    fresh = cloudpickle.loads(cloudpickle.dumps(make_searcher(search)))
    fresh.restore(str(tmp_path / "searcher-state.pkl"))  # outside replaying: nothing replayed
    assert fresh.suggest("t4") != lost
