"""The search's configuration without Ray: presets, the conditional space Optuna sees, starting
points, ranking and the Pareto front."""
from __future__ import annotations

import optuna
import pytest
import yaml

from search.config import SearchConfig, compose, list_presets
from search.ranking import pareto_front, rank
from search.space import SearchSpace
from smoothblock import Config
from smoothblock.errors import ConfigError


def _sample(space: SearchSpace, base: Config, n: int = 40, seed: int = 0) -> list[tuple[dict, dict]]:
    """(Optuna's params, the trial's constants) for ``n`` random trials of ``space``."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    function = space.define_by_run(base)
    out = []
    for _ in range(n):
        trial = study.ask()
        constants = function(trial)
        out.append((dict(trial.params), constants))
        study.tell(trial, 0.0)
    return out


def test_every_preset_composes_and_names_only_config_fields():
    assert list_presets() == ["adv", "posthoc", "train"]
    for preset in list_presets():
        search = compose(preset)
        assert search.space.searched, preset
        assert search.trainable == ("posthoc" if preset == "posthoc" else "train")


def test_parameters_appear_only_where_they_have_an_effect():
    space = SearchSpace.from_dict({"method": ["smoothblock", "dropblock", "mixed"], "positions": [[1], [2, 3]],
                                   "block_size": {"low": 1, "high": 5}, "mean": ["sample", "channel"],
                                   "smooth_prob": {"low": 0.0, "high": 1.0}, "ensemble": {"low": 1, "high": 4}})
    seen = set()
    for params, constants in _sample(space, Config()):
        method = params["method"]
        seen.add(method)
        assert ("smooth_prob" in params) == (method == "mixed")
        assert ("mean" in params) == (method != "dropblock")  # DropBlock writes zeros, no mean
        assert params["positions"] in ("1", "2+3") and constants["positions"] in ([1], [2, 3])
        assert 1 <= params["block_size"] <= 5 and isinstance(params["block_size"], int)
    assert seen == {"smoothblock", "dropblock", "mixed"}


def test_no_ensemble_count_for_a_deterministic_test_time_model():
    space = SearchSpace.from_dict({"method": ["none", "smoothblock"], "defense_at": ["train", "both"],
                                   "ensemble": {"low": 1, "high": 3}, "keep_prob": {"low": 0.5, "high": 0.9}})
    for params, _ in _sample(space, Config()):
        random_at_test = params["method"] != "none" and params["defense_at"] != "train"
        assert ("ensemble" in params) == random_at_test
        assert ("keep_prob" in params) == (params["method"] != "none")


def test_fixed_parameters_are_constants_not_optuna_dimensions():
    space = SearchSpace.from_dict({"keep_prob": 0.8, "block_size": [2, 3], "positions": [[1, 2]]})
    (params, constants), *_ = _sample(space, Config(), n=1)
    assert set(params) == {"block_size"}
    assert constants == {"keep_prob": 0.8, "positions": [1, 2]}


def test_training_hyperparameters_are_searchable_ranges():
    space = SearchSpace.from_dict({"lr": {"low": 0.05, "high": 0.2, "log": True}, "weight_decay": {"low": 0.0, "high": 0.001}})
    for params, _ in _sample(space, Config(), n=5):
        assert 0.05 <= params["lr"] <= 0.2 and 0.0 <= params["weight_decay"] <= 0.001


@pytest.mark.parametrize("space, message", [
    ({"keep_prob": 0.7}, "search space is empty"),
    ({"weight_decay": {"low": -0.1, "high": 0.1}}, "weight_decay: Input should be greater than or equal to 0"),
    ({"keep_probability": [0.5, 0.6]}, "unknown parameter 'keep_probability'"),
    ({"data": ["a", "b"]}, "data is not searchable"),
    ({"keep_prob": {"low": 0.9, "high": 0.5}}, "low 0.9 > high 0.5"),
    ({"keep_prob": {"low": 0.5, "high": 1.5}}, "keep_prob"),
    ({"weight_decay": {"low": 0.0, "high": 0.1, "log": True}}, "needs low > 0"),
    ({"method": []}, "empty list of choices"),
    ({"method": ["smoothblock", "smoothblock"]}, "repeats a choice"),
    ({"positions": [1, 2]}, "list of position lists"),
    ({"positions": [[6]]}, "position"),
    ({"positions": [[4]], "block_size": {"low": 1, "high": 9}}, "larger than the 8x8 feature map"),
])
def test_a_bad_space_is_refused_with_the_parameter_named(space, message):
    with pytest.raises(ConfigError, match=message):
        SearchConfig.from_dict({"space": space})


def test_a_config_file_narrows_the_preset_key_by_key(tmp_path):
    path = tmp_path / "narrow.yaml"
    path.write_text(yaml.safe_dump({"trials": 3, "base": {"val_size": 2000},
                                    "space": {"method": ["smoothblock"], "positions": [[2]]}}))
    search = compose("posthoc", str(path), data="somewhere", trials=5)
    assert search.trials == 5  # flags win over the file
    assert search.base.val_size == 2000 and search.base.data == "somewhere" and search.base.split_seed == 0
    assert search.space.to_dict()["method"] == "smoothblock"  # fixed now ...
    assert "keep_prob" in search.space.to_dict()  # ... and the rest of the preset's space stays
    # The preset's starting points at position 1 no longer fit the narrowed space: dropped.
    assert search.points_to_evaluate == ()
    assert compose("posthoc").points_to_evaluate[0]["positions"] == [1]


def test_starting_points_are_checked_against_the_space():
    space = {"method": ["smoothblock", "mixed"], "positions": [[1], [2]], "block_size": {"low": 1, "high": 5},
             "smooth_prob": {"low": 0.0, "high": 1.0}}
    good = SearchConfig.from_dict({"space": space, "points_to_evaluate": [{"method": "smoothblock", "positions": [2]}]})
    assert good.space.encode_point(good.points_to_evaluate[0], good.base) == {"method": "smoothblock",
                                                                               "positions": "2"}
    for point, message in [({"method": "dropblock"}, "not one of the space's choices"),
                           ({"block_size": 7}, "outside the space's integer range"),
                           ({"block_size": 2.5}, "outside the space's integer range"),
                           ({"keep_prob": 0.5}, "not a searched parameter"),
                           ({"method": "smoothblock", "smooth_prob": 0.5}, "smooth_prob has no effect"),
                           ({}, "non-empty mapping")]:
        with pytest.raises(ConfigError, match=message):
            SearchConfig.from_dict({"space": space, "points_to_evaluate": [point]})


@pytest.mark.parametrize("changes, message", [
    ({"trials": 0}, "trials: Input should be greater than or equal to 1"),
    ({"trials": 2.5}, "trials: Input should be a valid integer"),
    ({"val_images": -1}, "val_images: Input should be greater than or equal to 1"),
    ({"attack": "pgd"}, "unknown key 'attack'"),
    ({"attacks": ["deepfool"]}, "unknown attack 'deepfool'"),
    ({"attacks": ["unbounded"]}, "unknown attack 'unbounded'"),  # a check of the audit, not a threat model
    ({"attacks": ["pgd", "pgd"]}, "each attack once"),
    ({"attacks": []}, "attacks: must name at least one attack"),
    ({"scheduler": "hyperband"}, "scheduler: must be one of asha, fifo"),
    ({"val_images": 4500, "audit_images": 1000}, "fresh audit_images"),
    ({"val_images": 300, "base": {"val_size": 200}}, "more than the validation split holds"),
    ({"trainable": "magic"}, "trainable: must be one of posthoc, train"),
    ({"min_clean_acc": 1.5}, "min_clean_acc: Input should be less than or equal to 1"),
    ({"gpus_per_trial": -1}, "gpus_per_trial: Input should be greater than or equal to 0"),
    ({"gpus_per_trial": 1.5}, "above 1 must be whole"),
    ({"cpus_per_trial": 0}, "needs some resources"),
    ({"name": "../escape"}, "name: must be letters"),
    ({"colour": "blue"}, "unknown key 'colour'"),
    ({"base": {"keep_prob": 2}}, "keep_prob"),
])
def test_bad_search_settings_are_one_clear_error(changes, message):
    with pytest.raises(ConfigError, match=message):
        SearchConfig.from_dict({"space": {"keep_prob": [0.5, 0.7]}, **changes})


def test_the_search_configuration_round_trips_through_yaml(tmp_path):
    search = compose("posthoc", name="round-trip")
    search.save(tmp_path / "s.yaml")
    again = SearchConfig.from_dict(yaml.safe_load((tmp_path / "s.yaml").read_text()))
    assert again == search


def test_ranking_puts_feasible_trials_first_and_the_pareto_front_drops_dominated_ones():
    rows = [{"id": "a", "clean_acc": 0.60, "pgd_acc": 0.30, "passes": 1},
            {"id": "b", "clean_acc": 0.80, "pgd_acc": 0.20, "passes": 1},
            {"id": "c", "clean_acc": 0.80, "pgd_acc": 0.20, "passes": 4},  # b with more passes
            {"id": "d", "clean_acc": 0.85, "pgd_acc": 0.10, "passes": 2},
            {"id": "e", "clean_acc": 0.50, "pgd_acc": 0.05, "passes": 1}]  # dominated by b
    assert [r["id"] for r in rank(rows, "pgd_acc")] == ["a", "b", "c", "d", "e"]
    assert [r["id"] for r in rank(rows, "pgd_acc", min_clean_acc=0.7)][:3] == ["b", "c", "d"]
    assert [r["id"] for r in pareto_front(rows, "pgd_acc")] == ["a", "b", "d"]


def test_audited_finalists_rank_first_by_their_audited_figure_and_stopped_trials_last():
    rows = [{"id": "masked", "clean_acc": 0.9, "robust_acc": 0.40, "audited_robust_acc": 0.01, "passes": 1},
            {"id": "honest", "clean_acc": 0.9, "robust_acc": 0.20, "audited_robust_acc": 0.18, "passes": 1},
            {"id": "lucky", "clean_acc": 0.9, "robust_acc": 0.60, "stopped_early": True, "passes": 1},
            {"id": "plain", "clean_acc": 0.9, "robust_acc": 0.10, "passes": 1}]
    assert [r["id"] for r in rank(rows, "robust_acc")] == ["honest", "masked", "plain", "lucky"]


def test_tied_finalists_rank_the_same_in_any_order_the_trials_are_read():
    # The 48-trial search's finalists tied on the audited figure (the identity at position 5): the
    # search's summary and `export` read the trials in different orders and named different winners.
    rows = [{"trial_id": "d53ac3c5", "clean_acc": 0.756, "robust_acc": 0.394, "audited_robust_acc": 0.344, "passes": 2},
            {"trial_id": "8f82ae4e", "clean_acc": 0.756, "robust_acc": 0.394, "audited_robust_acc": 0.344, "passes": 2},
            {"trial_id": "04f2b24e", "clean_acc": 0.756, "robust_acc": 0.396, "audited_robust_acc": 0.344, "passes": 2},
            {"trial_id": "c70bed07", "clean_acc": 0.756, "robust_acc": 0.396, "audited_robust_acc": 0.343, "passes": 3}]
    want = ["04f2b24e", "8f82ae4e", "d53ac3c5", "c70bed07"]  # audited, then the search's figure, then the id
    for order in (rows, rows[::-1], rows[1:] + rows[:1]):
        assert [r["trial_id"] for r in rank(order, "robust_acc")] == want


def test_the_verdict_says_when_the_best_finalist_is_the_identity():
    from search.report import IDENTITY, verdict

    audit = {"robust_gain": 0.002, "robust_gain_low": -0.003, "robust_gain_high": 0.007, "images": 1000}
    assert verdict({"audit": audit, "identity": 1.0}) == (
        "no defense adds robustness distinguishable from zero (best: +0.2 points, 95% CI -0.3..+0.7, "
        f"on 1000 fresh images; {IDENTITY})")
    assert IDENTITY not in verdict({"audit": audit, "identity": 0.0}) and IDENTITY not in verdict({"audit": audit})


def test_a_resumed_trial_finds_its_recorded_result_by_id_or_by_configuration():
    from trainables.params import config_params
    from trainables.recorded import Recorded

    cfg = Config(keep_prob=0.6, positions=(1, 2))
    result = {"clean_acc": 0.8, "pgd_acc": 0.3}
    recorded = Recorded({"abc": result}, ((config_params(cfg), result),))
    assert recorded.lookup("abc") == result
    assert recorded.lookup("new", cfg) == result  # the same configuration under a new trial id
    assert config_params(cfg)["positions"] == "[1, 2]"
    assert recorded.lookup("new", cfg.replace(keep_prob=0.7)) is None and recorded.lookup("new") is None


def test_a_starting_point_may_name_a_fixed_parameter_at_its_fixed_value():
    space = {"method": "smoothblock", "keep_prob": {"low": 0.5, "high": 0.9}}
    search = SearchConfig.from_dict({"space": space, "points_to_evaluate": [{"method": "smoothblock", "keep_prob": 0.7}]})
    assert search.space.encode_point(search.points_to_evaluate[0], search.base) == {"keep_prob": 0.7}
    with pytest.raises(ConfigError, match="method is fixed to 'smoothblock' in the space, not 'dropblock'"):
        SearchConfig.from_dict({"space": space, "points_to_evaluate": [{"method": "dropblock", "keep_prob": 0.7}]})


def test_every_sampled_trial_is_a_valid_starting_point_again():
    """A search resumed without Ray's saved state proposes its finished trials again from the
    values Tune gave them (MLflow tag ``smoothblock.sampled``, JSON): each must pass as a point."""
    import json

    for preset in list_presets():
        search = compose(preset)
        points = [json.loads(json.dumps({**params, **constants}))
                  for params, constants in _sample(search.space, search.base, n=30)]
        assert search.replace(points_to_evaluate=points).points_to_evaluate == tuple(points), preset
