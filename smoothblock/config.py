"""One typed, validated configuration for a defended model and its training.

The same flat field names are used everywhere: Python arguments, YAML keys, CLI flags
(``--keep_prob``) and, later, MLflow parameters. The object is frozen; derive variants with
:meth:`Config.replace`, which validates again.
"""
from __future__ import annotations

import dataclasses
import io
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .layers.block_mask import GAMMA_MODES
from .layers.smooth_block import MEAN_SCOPES
from .models.registry import POSITIONS, list_models

METHODS = ("none", "smoothblock", "dropblock", "mixed")
DEFENSE_AT = ("test", "train", "both")
RECIPES = ("fast", "paper")
ADV_TRAINING = ("none", "fgsm", "pgd")


@dataclass(frozen=True)
class Config:
    """A defended model, its data and its training.

    Defense (thesis Sections 3.5, 4.2-4.5):
        arch: a registered architecture (resnet20, resnet32, resnet44, resnet56).
        num_classes: number of classes.
        method: none, smoothblock, dropblock or mixed (SmoothBlock or DropBlock per pass).
        positions: defense positions, 1-5 (thesis Section 4.2); several at once are allowed.
        block_size: side of the square blocks.
        keep_prob: probability that a unit is kept, in (0, 1].
        gamma: calibrated (kept fraction = keep_prob on the real map) or thesis ((1-p)/b^2).
        mean: sample (one mean per sample, the thesis' m = mean(X)) or channel.
        smooth_prob: for method mixed, the probability of SmoothBlock on a pass.
        ensemble: number of stochastic passes averaged (self-ensemble, Section 4.5).
        defense_at: test (post-hoc defense), train (regulariser only) or both.
        seed: seed of everything random: split, initialisation, batches, defense draws.

    Data:
        data: "cifar10" (torchvision download into the cache) or an ImageFolder folder with
            train/ and test/.
        val_size: images carved from the training set for validation (searches score there).
        split_seed: seed of the validation split; the same for the shipped model and searches.
        subset: train on only this many training images (None: all).
        cache_dir: where downloads and decoded tensors go (None: ~/.cache/smoothblock).

    Training:
        recipe: fast (SGD Nesterov, one-cycle, 100 epochs) or paper (thesis Section 4.1:
            Adam 1e-3, batch 128, 200 epochs, lr x0.1 at 80 and x0.5 at 180).
        epochs, batch_size, lr, weight_decay, label_smoothing: None takes the recipe's value.
        cutout: side of the square Cutout (DeVries & Taylor 2017) fills in each training image, on
            top of crop and flip; 0 for none.
        trivial_augment: TrivialAugment (Müller & Hutter 2021; torchvision's TrivialAugmentWide)
            on each training image before crop, flip and Cutout.
        swa_epochs: Stochastic Weight Averaging (Izmailov et al. 2018, "Averaging Weights Leads to
            Wider Optima and Better Generalization"): the last swa_epochs of the epochs run at the
            constant learning rate swa_lr, after the recipe's schedule has run its course over
            the epochs before them; the weights at the end of each of these epochs are averaged,
            and the average, with its batch-norm statistics recomputed, is the run's model.
            0 for none. A finished run lengthened by --resume with epochs + N and swa_epochs N
            keeps its schedule exactly and averages the N new epochs.
        swa_lr: the constant learning rate of the SWA epochs; None: half the recipe's lr (the
            SWA paper's ResNets on CIFAR: 0.1 then 0.05).
        teachers: knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural
            Network"): shipped model names or checkpoint paths whose averaged softened predictions
            on each training batch the model also learns from; () for none. The teachers see the
            same augmented images as the model.
        distill_weight: weight of the distillation term; the label cross-entropy gets
            1 - distill_weight (0.9, with distill_temperature 4, is the CIFAR setting of Tian et
            al. 2020's distillation benchmark, RepDistiller).
        distill_temperature: the softmax temperature T of both predictions; the term is
            T^2 KL(teachers || model), Hinton et al.'s scaling, so its gradients keep their size.
        init_from: a shipped model name or checkpoint file whose weights the training starts from
            (fine-tuning: the recipe's whole schedule then runs from them) instead of a fresh
            initialisation; None for a fresh one. Same arch and num_classes. A run that starts
            from a model trained on the same split keeps the validation split unseen.
        sam_rho: Sharpness-Aware Minimization (Foret et al. 2021, :mod:`smoothblock.sam`): each
            step's gradient is taken at the weights moved by sam_rho along the normalised
            gradient (two passes a step); 0 for none (plain SGD). The paper's CIFAR value: 0.05.
            With adversarial training, both passes use the adversarial examples made once at
            the unperturbed weights (as Wu et al. 2020's adversarial weight perturbation does).
        adv_training: none, fgsm or pgd (adversarial examples injected during training).
        adv_eps, adv_alpha, adv_steps: the training attack (PGD uses all three).
        adv_ratio: weight of the adversarial loss; the clean loss gets 1 - adv_ratio.
        bf16: bfloat16 autocast for training; None (auto) turns it on for GPUs that support it and
            for CPUs with AMX or AVX-512 BF16 instructions, where it is fast (1.6x float32 on a
            2-core AVX-512 BF16 EPYC, BENCHMARKS.md), and off elsewhere (on an AVX2-only CPU it
            is ~10x slower).
        compile: train through ``torch.compile`` (TorchInductor's fused kernels): the same
            model and weights; evaluation stays eager. The first epoch compiles (some 20 s on a
            GPU). For a ResNet20 at batch 128 on an H200 it was no faster (0.91x eager,
            BENCHMARKS.md): the host bounds those steps; larger models or batches may gain.
        device: auto, cpu, cuda or cuda:N.
        out_dir: where checkpoints and the log go.
    """

    arch: str = "resnet20"
    num_classes: int = 10
    method: str = "smoothblock"
    positions: tuple[int, ...] = (1,)
    block_size: int = 3
    keep_prob: float = 0.7
    gamma: str = "calibrated"
    mean: str = "sample"
    smooth_prob: float = 0.5
    ensemble: int = 1
    defense_at: str = "test"
    seed: int = 0
    data: str = "cifar10"
    val_size: int = 5000
    split_seed: int = 0
    subset: int | None = None
    cache_dir: str | None = None
    recipe: str = "fast"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    cutout: int = 0
    trivial_augment: bool = False
    swa_epochs: int = 0
    swa_lr: float | None = None
    teachers: tuple[str, ...] = ()
    distill_weight: float = 0.9
    distill_temperature: float = 4.0
    init_from: str | None = None
    sam_rho: float = 0.0
    adv_training: str = "none"
    adv_eps: float = 8 / 255
    adv_alpha: float = 2 / 255
    adv_steps: int = 7
    adv_ratio: float = 0.5
    bf16: bool | None = None
    compile: bool = False
    device: str = "auto"
    out_dir: str = "runs/train"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("positions", "teachers") and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
                value = getattr(self, f.name)
            _check_type(f.name, value, hints[f.name])
            if isinstance(value, int) and not isinstance(value, bool) and hints[f.name] in (float, float | None):
                object.__setattr__(self, f.name, float(value))
        self._check_values()

    def _check_values(self) -> None:
        choices = {"method": METHODS, "gamma": GAMMA_MODES, "mean": MEAN_SCOPES, "defense_at": DEFENSE_AT,
                   "recipe": RECIPES, "adv_training": ADV_TRAINING, "arch": tuple(list_models())}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 < self.keep_prob <= 1.0:
            raise ConfigError(f"keep_prob must be in (0, 1], got {self.keep_prob}")
        if not 0.0 <= self.smooth_prob <= 1.0:
            raise ConfigError(f"smooth_prob must be in [0, 1], got {self.smooth_prob}")
        if not 0.0 <= self.adv_ratio <= 1.0:
            raise ConfigError(f"adv_ratio must be in [0, 1], got {self.adv_ratio}")
        positive = ["block_size", "num_classes", "ensemble", "adv_steps", "epochs", "batch_size", "subset"]
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        for name in ("lr", "adv_eps", "adv_alpha"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.sam_rho < 0:
            raise ConfigError(f"sam_rho must be >= 0, got {self.sam_rho}")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.cutout < 0:
            raise ConfigError(f"cutout must be >= 0, got {self.cutout}")
        if self.swa_epochs < 0:
            raise ConfigError(f"swa_epochs must be >= 0, got {self.swa_epochs}")
        if self.swa_lr is not None and self.swa_lr <= 0:
            raise ConfigError(f"swa_lr must be > 0, got {self.swa_lr}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ConfigError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if self.distill_temperature <= 0:
            raise ConfigError(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if self.teachers and self.adv_training != "none":
            raise ConfigError("teachers (distillation) cannot be combined with adv_training")
        if self.val_size < 0:
            raise ConfigError(f"val_size must be >= 0, got {self.val_size}")
        if self.method != "none" and not self.positions:
            raise ConfigError(f"positions must name at least one position for method {self.method}")
        sizes = POSITIONS[self.arch]
        for position in self.positions:
            if position not in sizes:
                raise ConfigError(
                    f"position {position} does not exist in {self.arch}; positions are "
                    f"{', '.join(map(str, sizes))}"
                )
            side = sizes[position]
            # On a 1 x 1 map any block is clipped to the one unit; on a larger map a block wider
            # than the map would wipe all of it from any centre, which is not a block defense.
            if self.method != "none" and side > 1 and self.block_size > side:
                raise ConfigError(
                    f"block_size {self.block_size} is larger than the {side}x{side} feature map at "
                    f"position {position} of {self.arch}"
                )
        if len(set(self.positions)) != len(self.positions):
            raise ConfigError(f"positions must not repeat, got {list(self.positions)}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    # -- derived -------------------------------------------------------------------------

    @property
    def defended(self) -> bool:
        """Whether any block layer is in the model."""
        return self.method != "none" and bool(self.positions) and self.keep_prob < 1.0

    @property
    def passes(self) -> int:
        """Forward passes per image at inference (the inference cost)."""
        return self.ensemble if self.defended and self.defense_at != "train" else 1

    # -- conversions ---------------------------------------------------------------------

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied and validated (unknown names are refused)."""
        return Config.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["positions"] = list(self.positions)
        d["teachers"] = list(self.teachers)
        return d

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "configuration") -> Config:
        """Build from a mapping; unknown keys and wrong types raise ConfigError naming them."""
        check_keys(data, {f.name for f in fields(cls)}, source)
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "configuration") -> Config:
        # What an export records beside the configuration (the figure it claims and its audit):
        # measurements of the model, not settings of a run, so training reads past them.
        data = {k: v for k, v in parse_yaml(text, source).items() if k not in RECORD_KEYS}
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"configuration file {path} does not exist")
        return cls.from_yaml(path.read_text(encoding="utf-8"), source=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")


def check_keys(data: Any, known: set[str], source: str) -> None:
    """The project's one check of a configuration mapping: a mapping, and no key outside ``known``
    (ConfigError naming the first unknown one, in one line)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping of key: value, not a {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}")


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    """The project's one YAML reader: a mapping from text, read with the safe loader (no Python
    tags, so nothing runs); ConfigError naming ``source`` (and the line) otherwise. Empty -> {}."""
    try:
        data = yaml.safe_load(io.StringIO(text))
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise ConfigError(f"{source} is not valid YAML" + (f" at line {line + 1}" if line is not None else "")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping of key: value, not a {type(data).__name__}")
    return data


#: Top-level keys of a configuration file that record results (``smoothblock export`` writes them).
RECORD_KEYS = ("robust_acc", "clean_acc", "audit")


def _check_type(name: str, value: Any, hint: Any) -> None:
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return
        raise ConfigError(f"{name} must not be empty")
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    origin = typing.get_origin(base)
    if origin is tuple:
        item = typing.get_args(base)[0]
        valid = _is_int if item is int else (lambda v: isinstance(v, str))
        if not isinstance(value, tuple) or not all(valid(v) for v in value):
            kind = "integers" if item is int else "strings"
            raise ConfigError(f"{name} must be a list of {kind}, got {value!r}")
        return
    ok = {
        int: _is_int(value),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }[base]
    if not ok:
        raise ConfigError(f"{name} must be of type {base.__name__}, got {type(value).__name__} {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


FIELD_NAMES = tuple(f.name for f in fields(Config))
__all__ = ["Config", "FIELD_NAMES", "METHODS", "DEFENSE_AT", "RECIPES", "ADV_TRAINING"]
