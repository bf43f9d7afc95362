import re

import pytest

from smoothblock import Config, ConfigError


def test_yaml_round_trip(tmp_path):
    cfg = Config(method="mixed", positions=(1, 4), block_size=5, keep_prob=0.8, ensemble=8, subset=100, lr=0.05)
    assert Config.from_yaml(cfg.to_yaml()) == cfg
    cfg.save(tmp_path / "c.yaml")
    assert Config.load(tmp_path / "c.yaml") == cfg
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_numbers_stay_numbers():
    cfg = Config(keep_prob=1, lr=1)
    assert isinstance(cfg.keep_prob, float) and isinstance(cfg.lr, float)
    assert "keep_prob: 1.0" in cfg.to_yaml()


def test_replace_validates():
    with pytest.raises(ConfigError, match="keep_prob"):
        Config().replace(keep_prob=2.0)
    with pytest.raises(ConfigError, match="unknown key 'keep_probability'"):
        Config().replace(keep_probability=0.5)


def test_passes_counts_the_inference_cost():
    assert Config(ensemble=8).passes == 8
    assert Config(ensemble=8, method="none").passes == 1
    assert Config(ensemble=8, defense_at="train").passes == 1


@pytest.mark.parametrize("data,msg", [
    ({"keep_probability": 0.5}, "unknown key 'keep_probability'"),
    ({"block_size": "3"}, "block_size: Input should be a valid integer, got '3'"),
    ({"block_size": 2.5}, "block_size: Input should be a valid integer"),
    ({"ensemble": True}, "ensemble: Input should be a valid integer, got True"),
    ({"keep_prob": "high"}, "keep_prob: Input should be a valid number"),
    ({"positions": "1"}, "positions: Input should be a valid tuple"),
    ({"positions": ["a"]}, "positions.0: Input should be a valid integer"),
    ({"keep_prob": 0.0}, "keep_prob: Input should be greater than 0"),
    ({"keep_prob": 1.2}, "keep_prob: Input should be less than or equal to 1"),
    ({"block_size": 0}, "block_size: Input should be greater than or equal to 1"),
    ({"positions": [6]}, "position 6 does not exist"),
    ({"positions": [4], "block_size": 9}, "block_size 9 is larger than the 8x8 feature map at position 4"),
    ({"method": "cutout"}, "method: must be one of none, smoothblock"),
    ({"arch": "resnet18"}, "arch: must be one of resnet20"),
    ({"positions": []}, "positions must name at least one position"),
    ({"ensemble": 0}, "ensemble: Input should be greater than or equal to 1"),
    ({"positions": [1, 1]}, "positions must not repeat"),
    ({"lr": -1.0}, "lr: Input should be greater than 0"),
    ({"cutout": -1}, "cutout: Input should be greater than or equal to 0"),
    ({"device": "tpu"}, "device: must be auto, cpu, cuda or cuda:N"),
])
def test_bad_configurations(data, msg):
    with pytest.raises(ConfigError, match=f"^c.yaml: {re.escape(msg)}") as caught:
        Config.from_dict(data, source="c.yaml")
    assert "\n" not in str(caught.value)


def test_block_larger_than_map_is_fine_at_the_one_by_one_position():
    assert Config(positions=(5,), block_size=7).block_size == 7


def test_bad_yaml():
    with pytest.raises(ConfigError, match="not valid YAML at line 3"):
        Config.from_yaml("method: smoothblock\nkeep_prob: [0.5\n")
    with pytest.raises(ConfigError, match="must hold a mapping of key: value, not a list"):
        Config.from_yaml("- 1\n- 2\n")


def test_the_sections_split_what_a_model_is_from_where_it_came_from_and_how_a_run_executes():
    from smoothblock.config import DataSpec, ModelSpec, RunSpec, TrainSpec
    sections = [set(s.model_fields) for s in (ModelSpec, DataSpec, TrainSpec, RunSpec)]
    assert set().union(*sections) == set(Config.model_fields)
    assert sum(map(len, sections)) == len(Config.model_fields)  # no field in two sections
    cfg = Config(data="/home/someone/cifar10-jpg", init_from="/nowhere/model.safetensors", out_dir="/tmp/x",
                 keep_prob=0.5, ensemble=4)
    assert cfg.spec() == ModelSpec(keep_prob=0.5, ensemble=4)
    record = cfg.provenance()
    assert record["data"] == "folder:cifar10-jpg" and record["init_from"] == "/nowhere/model.safetensors"
    assert not set(record) & set(RunSpec.model_fields) and not set(record) & set(ModelSpec.model_fields)
