"""The search's one typed configuration: what to search, how to score it and how to run it.

A preset (``search/presets/*.yaml``) is overlaid by the user's ``--config`` file and then by the
command-line flags; each key has the same name in all three. ``base`` holds the
:class:`smoothblock.Config` fields every trial shares (data, split, recipe, ...); ``space`` holds
the ones Optuna varies (:mod:`search.space`). Each trial's configuration is ``base`` with the
trial's values applied: the same ``Config`` that ``smoothblock train`` and ``evaluate`` take.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smoothblock import Config
from smoothblock.attacks import ATTACKS, AttackSettings
from smoothblock.config import check_keys, parse_yaml
from smoothblock.errors import ConfigError

from .space import SearchSpace

PRESETS_DIR = Path(__file__).parent / "presets"
TRAINABLES = ("posthoc", "train")
SCHEDULERS = ("asha", "fifo")
#: The objective: the per-image worst case over the search's attacks (``smoothblock evaluate``'s name).
METRIC = "robust_acc"
#: Attacks that belong in the audit, not in every trial (see :mod:`smoothblock.audit`).
AUDIT_ONLY = ("unbounded", "eot_pgd_x2")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class SearchConfig:
    """A whole search.

    What is searched:
        trainable: posthoc (the defense goes into a trained model; thesis Section 4.2) or train
            (a model is trained with each trial's defense; Sections 4.3-4.4).
        model: posthoc: the trained model (a shipped name or a checkpoint file); train: weights to
            fine-tune from, or None to train from scratch.
        base: the Config fields every trial shares.
        space: the Config fields Optuna varies (see :mod:`search.space`).
        points_to_evaluate: configurations to try first (Ray Tune's name), each a mapping of
            searched parameters (those left out are sampled): a warm start from known settings.

    How a trial is scored (on the validation split, never the test split):
        attacks: the suite (registry names, :mod:`smoothblock.attacks`), run in this order as a
            cascade: the objective ``robust_acc`` counts an image only if it survives every one
            (the per-image worst case, as AutoAttack reports), maximised. The default holds an
            attack that ignores the randomness (``transfer``), one that follows it (``pgd``) and one
            that averages it out (``eot_pgd``).
        val_images: the first this many validation images, the same for every trial.
        chunk_images: a posthoc trial scores its images in chunks of this many and reports the
            running ``robust_acc`` after each; the scheduler stops clearly worse trials early.
        scheduler: asha (Tune's ASHAScheduler over chunks or epochs) or fifo (every trial runs to
            the end).
        eot_iter, eot_steps: draws per EOT step and steps of the EOT attacks.
        fgsm_eps: FGSM's eps (in 1/255) when the suite holds fgsm: one per eps is run.
        min_clean_acc: trials below this clean accuracy are infeasible (an Optuna constraint).
        multi_objective: search the Pareto front of clean_acc, robust_acc and passes (forward
            passes per image: the inference cost) with NSGA-II instead.

    The audit of the finalists (:mod:`smoothblock.audit`), when the trials end:
        audit_top: how many of the best trials are audited (0: none).
        audit_images: on the first this many validation images (at least val_images).

    How it runs:
        name: the search's name (MLflow experiment, results folder); None: preset and time.
        trials: number of trials.
        seed: seeds the sampler and every trial's evaluation.
        cpus_per_trial, gpus_per_trial: resources of one trial (fractions of a GPU allowed).
        max_concurrent_trials: None: as many as the cluster's resources hold.
        max_failures: retries of a trial that raises, before it is recorded FAILED.
        grace_period, reduction_factor: ASHA (train trainable): epochs every trial gets, and
            the fraction (1/reduction_factor) that goes on at each rung.
    """

    trainable: str = "posthoc"
    model: str | None = "resnet20-cifar10"
    base: Config = field(default_factory=Config)
    space: SearchSpace = field(default_factory=lambda: SearchSpace(()))
    points_to_evaluate: tuple[dict[str, Any], ...] = ()
    attacks: tuple[str, ...] = ("transfer", "pgd", "eot_pgd")
    val_images: int = 500
    chunk_images: int = 100
    scheduler: str = "asha"
    eot_iter: int = AttackSettings.eot_iter
    eot_steps: int = AttackSettings.eot_steps
    fgsm_eps: tuple[int, ...] = (8,)
    audit_top: int = 3
    audit_images: int = 500
    min_clean_acc: float | None = None
    multi_objective: bool = False
    name: str | None = None
    trials: int = 16
    seed: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent_trials: int | None = None
    max_failures: int = 1
    grace_period: int = 1
    reduction_factor: int = 3

    def __post_init__(self) -> None:
        if self.trainable not in TRAINABLES:
            raise ConfigError(f"trainable must be one of {', '.join(TRAINABLES)}, got {self.trainable!r}")
        if self.trainable == "posthoc" and not self.model:
            raise ConfigError("a posthoc search needs a model to put the defense into")
        for name in ("attacks", "fgsm_eps"):
            if not isinstance(getattr(self, name), (list, tuple)) or not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty list, got {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for attack in self.attacks:
            if attack not in ATTACKS or attack in AUDIT_ONLY:
                choices = ", ".join(a for a in ATTACKS if a not in AUDIT_ONLY)
                raise ConfigError(f"attacks: unknown attack {attack!r}; choose from {choices}")
        if len(set(self.attacks)) != len(self.attacks):
            raise ConfigError(f"attacks: each attack once, got {list(self.attacks)}")
        if not all(_is_int(e) and 1 <= e <= 255 for e in self.fgsm_eps):
            raise ConfigError(f"fgsm_eps must be integers in 1..255 (units of 1/255), got {list(self.fgsm_eps)}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        for name, low in (("trials", 1), ("val_images", 1), ("chunk_images", 1), ("eot_iter", 1), ("eot_steps", 1),
                          ("audit_top", 0), ("audit_images", 1), ("max_failures", 0),
                          ("grace_period", 1), ("reduction_factor", 2)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.max_concurrent_trials is not None and (not _is_int(self.max_concurrent_trials)
                                                       or self.max_concurrent_trials < 1):
            raise ConfigError(f"max_concurrent_trials must be an integer >= 1, got {self.max_concurrent_trials!r}")
        for name in ("cpus_per_trial", "gpus_per_trial"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if self.cpus_per_trial == 0 and self.gpus_per_trial == 0:
            raise ConfigError("a trial needs some resources: cpus_per_trial or gpus_per_trial > 0")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ConfigError(f"gpus_per_trial above 1 must be whole, got {self.gpus_per_trial}")
        if self.val_images > self.base.val_size:
            raise ConfigError(f"val_images ({self.val_images}) is more than the validation split holds "
                              f"(base.val_size {self.base.val_size})")
        if self.audit_images < self.val_images:
            raise ConfigError(f"audit_images ({self.audit_images}) must be at least val_images ({self.val_images})")
        if self.min_clean_acc is not None and (isinstance(self.min_clean_acc, bool) or
                                               not isinstance(self.min_clean_acc, (int, float))
                                               or not 0 <= self.min_clean_acc <= 1):
            raise ConfigError(f"min_clean_acc must be a fraction in [0, 1], got {self.min_clean_acc!r}")
        if not isinstance(self.multi_objective, bool):
            raise ConfigError(f"multi_objective must be true or false, got {self.multi_objective!r}")
        if self.name is not None and (not isinstance(self.name, str) or not NAME_PATTERN.match(self.name)):
            raise ConfigError(f"name must be letters, digits, '.', '_' or '-' (at most 100), got {self.name!r}")
        if not _is_int(self.seed):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        self.space.check(self.base)
        if not isinstance(self.points_to_evaluate, (list, tuple)):
            raise ConfigError("points_to_evaluate must be a list of mappings of parameter: value")
        object.__setattr__(self, "points_to_evaluate", tuple(self.points_to_evaluate))
        for point in self.points_to_evaluate:
            self.space.encode_point(point, self.base)

    # -- the objective -------------------------------------------------------------------

    @property
    def metric(self) -> str:
        """The reported metric the search maximises."""
        return METRIC

    def attack_settings(self) -> AttackSettings:
        """The attacks' parameters for every trial, the baseline and the audit: every image of a
        trial (and of the audit) gets every attack."""
        return AttackSettings(eot_iter=self.eot_iter, eot_steps=self.eot_steps, fgsm_eps=self.fgsm_eps,
                              eot_n=self.audit_images, cw_n=self.audit_images)

    @property
    def chunks(self) -> int:
        """Reports of a posthoc trial: one per chunk of images."""
        return -(-self.val_images // self.chunk_images)

    @property
    def objectives(self) -> tuple[tuple[str, str], ...]:
        """(metric, mode) pairs Optuna optimises."""
        if self.multi_objective:
            return (("clean_acc", "max"), (self.metric, "max"), ("passes", "min"))
        return ((self.metric, "max"),)

    # -- conversions ---------------------------------------------------------------------

    def replace(self, **changes: Any) -> SearchConfig:
        return SearchConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["base"] = _non_default(self.base)
        out["space"] = self.space.to_dict()
        out["points_to_evaluate"] = [dict(p) for p in self.points_to_evaluate]
        out["attacks"], out["fgsm_eps"] = list(self.attacks), list(self.fgsm_eps)
        return out

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "search configuration") -> SearchConfig:
        if isinstance(data, dict) and "attack" in data:
            raise ConfigError(f"{source}: 'attack' is now 'attacks', a list; the objective is robust_acc, "
                              "the per-image worst case over them (for example attacks: [transfer, pgd, eot_pgd])")
        check_keys(data, {f.name for f in dataclasses.fields(cls)}, source)
        values = dict(data)
        base = values.get("base") or {}
        if isinstance(base, Config):
            base = base.to_dict()
        values["base"] = Config.from_dict(base, source=f"{source}: base")
        space = values.get("space")
        try:
            values["space"] = space if isinstance(space, SearchSpace) else SearchSpace.from_dict(space)
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "search configuration") -> SearchConfig:
        return cls.from_dict(parse_yaml(text, source), source=source)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")


def _non_default(cfg: Config) -> dict[str, Any]:
    default = Config().to_dict()
    return {k: v for k, v in cfg.to_dict().items() if v != default[k]}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML mapping from a file; ConfigError (one line) when missing, malformed or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file") from None
    return parse_yaml(text, str(path))


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def compose(preset: str | None, config_file: str | None = None, **flags: Any) -> SearchConfig:
    """The preset, overlaid by ``config_file`` (``base`` and ``space`` merge key by key), then ``flags``.

    Without a preset the file stands alone (over :class:`SearchConfig`'s defaults). ``flags`` are
    top-level keys, except ``data`` which goes into ``base``; None means not given. The preset's
    ``points_to_evaluate`` that a narrowed space no longer holds are dropped.
    """
    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in list_presets():
            raise ConfigError(f"unknown preset {preset!r}; presets are {', '.join(list_presets())}")
        data = read_yaml(PRESETS_DIR / f"{preset}.yaml", "preset")
    if config_file is not None:
        user = read_yaml(config_file, "configuration file")
        for section in ("base", "space"):
            if section in user:
                if not isinstance(user[section], dict):
                    raise ConfigError(f"{config_file}: {section} must be a mapping")
                data[section] = {**(data.get(section) or {}), **user.pop(section)}
        data.update(user)
    flags = {k: v for k, v in flags.items() if v is not None}
    if "data" in flags:
        data["base"] = {**(data.get("base") or {}), "data": flags.pop("data")}
    data.update(flags)
    if preset is not None and config_file is not None and "points_to_evaluate" not in user:
        data["points_to_evaluate"] = _points_that_fit(data, config_file)
    return SearchConfig.from_dict(data, source=config_file or f"preset {preset}")


def _points_that_fit(data: dict[str, Any], source: str) -> list[Any]:
    """The preset's starting points that the user's narrowed space still holds (they are a warm
    start, not a requirement); a file that names its own points keeps them all, checked."""
    points = data.get("points_to_evaluate") or []
    try:
        space = SearchSpace.from_dict(data.get("space"))
        base = Config.from_dict(data.get("base") or {}, source=f"{source}: base")
    except ConfigError:
        return points  # SearchConfig.from_dict names the problem
    fits = []
    for point in points:
        try:
            space.encode_point(point, base)
        except ConfigError:
            continue
        fits.append(point)
    return fits
