"""The configuration of a defended model, its data, its training and one run.

Four sections, one flat :class:`Config`:

* :class:`ModelSpec`: what a model *is* (architecture, classes, defense). Saved with the weights
  and read back from them. Input normalisation (CIFAR-10's mean and std) is a buffer inside the
  network, not a setting.
* :class:`DataSpec` and :class:`TrainSpec`: where a model *came from* (data, split, recipe,
  seed). Saved with the weights as provenance (data as a name, never a path), never read back as
  settings: loaded weights get the defaults, or the caller's values.
* :class:`RunSpec`: how a run *executes* (device, folders, bf16, compile). Never saved with weights.

The same flat names are used everywhere: YAML keys, CLI flags (``--keep_prob``; ``--keep-prob`` is
an alias), MLflow parameters and Python arguments. Validation is :mod:`smoothblock.settings`'.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from .layers.block_mask import GAMMA_MODES
from .layers.smooth_block import MEAN_SCOPES
from .models.registry import POSITIONS, list_models
from .settings import IntList, Settings, one_of, parse_yaml, read_text

METHODS = ("none", "smoothblock", "dropblock", "mixed")
DEFENSE_AT = ("test", "train", "both")
RECIPES = ("fast", "paper")
ADV_TRAINING = ("none", "fgsm", "ffgsm", "pgd")

#: Fields whose value must be one of a fixed set (the registry's names for ``arch``).
CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS, "gamma": GAMMA_MODES, "mean": MEAN_SCOPES, "defense_at": DEFENSE_AT,
    "recipe": RECIPES, "adv_training": ADV_TRAINING,
}


def _check_choice(name: str, value: str) -> str:
    return one_of(value, tuple(list_models()) if name == "arch" else CHOICES[name])


class ModelSpec(Settings):
    """What a model is: its architecture, classes and defense (thesis Sections 3.5, 4.2-4.5)."""

    arch: str = Field("resnet20", description="a registered architecture: resnet20, resnet32, resnet44, resnet56")
    num_classes: int = Field(10, ge=1, description="number of classes")
    method: str = Field("smoothblock", description="none, smoothblock, dropblock or mixed (SmoothBlock or "
                                                   "DropBlock, drawn per pass)")
    positions: IntList = Field((1,), description="defense positions, 1-5 (thesis Section 4.2); several at "
                                                 "once are allowed")
    block_size: int = Field(3, ge=1, description="side of the square blocks")
    keep_prob: float = Field(0.7, gt=0, le=1, description="probability that a unit is kept")
    gamma: str = Field("calibrated", description="calibrated (the kept fraction is keep_prob on the real map) "
                                                 "or thesis ((1-p)/b^2)")
    mean: str = Field("sample", description="sample (one mean per sample, the thesis' m = mean(X)) or channel")
    smooth_prob: float = Field(0.5, ge=0, le=1, description="method mixed: the probability of SmoothBlock on "
                                                            "a pass")
    ensemble: int = Field(1, ge=1, description="stochastic passes averaged per image (self-ensemble, "
                                               "Section 4.5); the inference cost")
    defense_at: str = Field("test", description="test (post-hoc defense), train (regulariser only) or both")

    @field_validator("arch", "method", "gamma", "mean", "defense_at")
    @classmethod
    def _model_choice(cls, value: str, info) -> str:
        return _check_choice(info.field_name, value)

    @model_validator(mode="after")
    def _positions_fit(self) -> ModelSpec:
        if self.method != "none" and not self.positions:
            raise ValueError(f"positions must name at least one position for method {self.method}")
        if len(set(self.positions)) != len(self.positions):
            raise ValueError(f"positions must not repeat, got {list(self.positions)}")
        sizes = POSITIONS[self.arch]
        for position in self.positions:
            if position not in sizes:
                raise ValueError(f"position {position} does not exist in {self.arch}; positions are "
                                 f"{', '.join(map(str, sizes))}")
            side = sizes[position]
            # On a 1 x 1 map any block is clipped to the one unit; on a larger map a block wider
            # than the map would wipe all of it from any centre, which is not a block defense.
            if self.method != "none" and side > 1 and self.block_size > side:
                raise ValueError(f"block_size {self.block_size} is larger than the {side}x{side} feature map "
                                 f"at position {position} of {self.arch}")
        return self


class DataSpec(Settings):
    """The data: where images come from and the validation split that searches score on."""

    data: str = Field("cifar10", description="cifar10 (torchvision's download, into cache_dir) or a folder of "
                                             "images in ImageFolder layout with train/ and test/")
    val_size: int = Field(5000, ge=0, description="images carved from the training set for validation "
                                                  "(searches score there, never on the test set)")
    split_seed: int = Field(0, description="seed of the validation split; the same for the shipped model and "
                                           "searches")
    subset: int | None = Field(None, ge=1, description="train on only this many training images (null: all)")


class TrainSpec(Settings):
    """The training: recipe, augmentation, adversarial training (thesis Sections 4.1, 4.3, 4.4)."""

    seed: int = Field(0, description="seed of everything random: initialisation, batches, defense draws")
    recipe: str = Field("fast", description="fast (SGD Nesterov, one-cycle, 100 epochs) or paper (thesis "
                                            "Section 4.1: Adam 1e-3, batch 128, 200 epochs, lr x0.1 at 80 and "
                                            "x0.5 at 180)")
    epochs: int | None = Field(None, ge=1, description="null: the recipe's")
    batch_size: int | None = Field(None, ge=1, description="null: the recipe's")
    lr: float | None = Field(None, gt=0, description="peak learning rate; null: the recipe's")
    weight_decay: float | None = Field(None, ge=0, description="null: the recipe's")
    label_smoothing: float | None = Field(None, ge=0, lt=1, description="null: the recipe's (none)")
    cutout: int = Field(0, ge=0, description="side of the square Cutout (DeVries & Taylor 2017) in each "
                                             "training image, after crop and flip; 0 for none")
    init_from: str | None = Field(None, description="a shipped model name or checkpoint file whose weights the "
                                                    "training starts from (fine-tuning), same arch and "
                                                    "num_classes; null: a fresh initialisation")
    adv_training: str = Field("none", description="none, fgsm, ffgsm (FGSM from a random start, Wong et al. "
                                                   "2020: set adv_alpha to 1.25 adv_eps) or pgd: adversarial "
                                                   "examples in training")
    adv_eps: float = Field(8 / 255, gt=0, description="the training attack's eps (images in [0, 1])")
    adv_alpha: float = Field(2 / 255, gt=0, description="the step size of the training PGD and of ffgsm")
    adv_steps: int = Field(7, ge=1, description="the training PGD's steps")
    adv_ratio: float = Field(0.5, ge=0, le=1, description="weight of the adversarial loss; the clean loss gets "
                                                          "1 - adv_ratio")

    @field_validator("recipe", "adv_training")
    @classmethod
    def _train_choice(cls, value: str, info) -> str:
        return _check_choice(info.field_name, value)


class RunSpec(Settings):
    """How one run executes: never saved with the weights."""

    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    out_dir: str = Field("runs/train", description="where checkpoints and the log go")
    cache_dir: str | None = Field(None, description="where downloads and decoded tensors go (null: "
                                                    "~/.cache/smoothblock)")
    bf16: bool | None = Field(None, description="bfloat16 autocast for training; null (auto): on for GPUs that "
                                                "support it and CPUs with AMX or AVX-512 BF16 (1.6x float32 "
                                                "there, BENCHMARKS.md), off elsewhere (~10x slower on AVX2)")
    compile: bool = Field(False, description="train through torch.compile (evaluation stays eager); for a "
                                             "ResNet20 at batch 128 on an H200 it was no faster (0.91x, "
                                             "BENCHMARKS.md)")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not (value in ("auto", "cpu", "cuda") or value.startswith("cuda:")):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value


class Config(RunSpec, TrainSpec, DataSpec, ModelSpec):
    """A defended model, its data, its training and one run: the four sections, flat.

    ``smoothblock train`` and ``evaluate``, every search trial and every export take this one
    object. Only :meth:`spec` is saved as what the weights are; :meth:`provenance` is saved beside
    it as a record; the :class:`RunSpec` fields are never saved with weights.
    """

    # -- derived -------------------------------------------------------------------------

    @property
    def defended(self) -> bool:
        """Whether any block layer is in the model."""
        return self.method != "none" and bool(self.positions) and self.keep_prob < 1.0

    @property
    def passes(self) -> int:
        """Forward passes per image at inference (the inference cost)."""
        return self.ensemble if self.defended and self.defense_at != "train" else 1

    def spec(self) -> ModelSpec:
        """What the model is: the part of the configuration saved as the weights' own."""
        return ModelSpec(**{name: getattr(self, name) for name in ModelSpec.model_fields})

    def provenance(self) -> dict[str, Any]:
        """Where the model came from, for the record saved beside the weights: the data as a
        name (``cifar10`` or the folder's name), ``init_from`` as a shipped name or a file name
        with its SHA-256, and the training fields. No path of this machine."""
        out = {name: getattr(self, name) for name in (*DataSpec.model_fields, *TrainSpec.model_fields)}
        out["data"] = data_name(self.data)
        if self.init_from is not None:
            out["init_from"] = file_record(self.init_from)
        return _lists(out)

    @classmethod
    def from_yaml(cls, text: str, *, source: str | None = None) -> Config:
        # What an export records beside the configuration (the figure it claims and its audit):
        # measurements of the model, not settings of a run, so training reads past them.
        source = source or cls.source_name()
        data = {k: v for k, v in parse_yaml(text, source).items() if k not in RECORD_KEYS}
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls, path: str | Path) -> Config:
        return cls.from_yaml(read_text(path, "configuration file"), source=str(path))


def data_name(data: str) -> str:
    """``data`` as provenance: ``cifar10``, or an image folder's own name (no path)."""
    return data if data == "cifar10" else f"folder:{Path(data).name}"


def file_record(name_or_path: str) -> str:
    """A shipped name as it is; a file as ``name sha256:HEX`` (no folder)."""
    path = Path(name_or_path)
    if not path.is_file():
        return str(name_or_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return f"{path.name} sha256:{digest}"


def _lists(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


#: Top-level keys of a configuration file that record results (``smoothblock export`` writes them).
RECORD_KEYS = ("robust_acc", "clean_acc", "robust_gain", "clean_cost", "audit")
FIELD_NAMES = tuple(Config.model_fields)
__all__ = ["Config", "ModelSpec", "DataSpec", "TrainSpec", "RunSpec", "FIELD_NAMES", "METHODS", "DEFENSE_AT",
           "RECIPES", "ADV_TRAINING"]
