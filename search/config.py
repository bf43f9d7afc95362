"""The search's one typed configuration: what to search, how to score it and how to run it.

A preset (``search/presets/*.yaml``) is overlaid by the user's ``--config`` file and then by the
command-line flags; each key has the same name in all three. ``base`` holds the
:class:`smoothblock.Config` fields every trial shares (data, split, recipe, ...); ``space`` holds
the ones Optuna varies (:mod:`search.space`). Each trial's configuration is ``base`` with the
trial's values applied: the same ``Config`` that ``smoothblock train`` and ``evaluate`` take.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field, field_validator, model_validator

from smoothblock import Config
from smoothblock.attacks import ATTACKS, NORMS, AttackSettings
from smoothblock.audit import CHECKS
from smoothblock.errors import ConfigError
from smoothblock.settings import IntList, Settings, StrList, as_tuple, one_of, parse_yaml, read_text

from .space import SearchSpace

PRESETS_DIR = Path(__file__).parent / "presets"
TRAINABLES = ("posthoc", "train")
SCHEDULERS = ("asha", "fifo")
#: The objective: the per-image worst case over the search's attacks (``smoothblock evaluate``'s name).
METRIC = "robust_acc"
#: Attacks that belong in the audit, not in every trial (see :mod:`smoothblock.audit`).
AUDIT_ONLY = CHECKS
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _space(value: Any) -> Any:
    return value if isinstance(value, SearchSpace) else SearchSpace.from_dict(value)


def _config(value: Any) -> Any:
    # ``base`` in a file holds only the fields it changes, and may be left empty.
    return {} if value is None else value


class SearchConfig(Settings):
    """A whole search: what is searched, how a trial is scored, the audit, how it runs. Each
    field's description is in ``docs/configuration.md``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    # What is searched.
    trainable: str = Field("posthoc", description="posthoc (the defense goes into a trained model; thesis "
                                                  "Section 4.2) or train (a model is trained with each trial's "
                                                  "defense; Sections 4.3-4.4)")
    model: str | None = Field("resnet20-cifar10-fgsm-at", description="posthoc: the trained model (a shipped name or a "
                                                              "checkpoint file); train: weights to fine-tune "
                                                              "from, or null to train from scratch")
    base: Annotated[Config, BeforeValidator(_config)] = Field(
        default_factory=Config, description="the Config fields every trial shares (data, split, recipe, ...)")
    space: Annotated[SearchSpace, BeforeValidator(_space)] = Field(
        default_factory=lambda: SearchSpace(()), description="the Config fields Optuna varies: a value (fixed), "
                                                             "a list (a choice) or {low, high[, log, step]}")
    points_to_evaluate: Annotated[tuple[dict[str, Any], ...], BeforeValidator(as_tuple)] = Field(
        (), description="configurations to try first (Ray Tune's name), each a mapping of searched parameters "
                        "(those left out are sampled): a warm start from known settings")
    # How a trial is scored (on the validation split, never the test split).
    attacks: StrList = Field(("transfer", "pgd", "eot_pgd"), description=(
        "the suite (registry names), run in this order as a cascade: the objective robust_acc counts an image "
        "only if it survives every one (the per-image worst case, as AutoAttack reports). The default holds "
        "an attack that ignores the randomness (transfer), one that follows it (pgd) and one that averages it "
        "out (eot_pgd)"))
    norm: str = Field("linf", description="the threat model every attack with a radius stays in: linf or l2 "
                                          "(the FGSM attacks are linf only)")
    eps: float | None = Field(None, gt=0, description="the ball's radius: linf in 1/255 (null: 8), l2 as a float "
                                                      "(null: 0.5, RobustBench's L2 setting)")
    val_images: int = Field(500, ge=1, description="the first this many validation images, the same for every "
                                                   "trial")
    chunk_images: int = Field(100, ge=1, description="a posthoc trial scores its images in chunks of this many "
                                                     "and reports the running robust_acc after each; the "
                                                     "scheduler stops clearly worse trials early")
    attack_rows: int | None = Field(None, ge=1, description=(
        "rows (images x passes of the ensemble) through the network at once in a trial's and the audit's "
        "attacks; null: 200 on a CPU (faster there than larger batches, and lighter), 8192 on a GPU (a "
        "trial's images in one batch)"))
    attack_bf16: bool = Field(False, description=(
        "run the trials' and the audit's attacks under bfloat16 autocast (several times faster on a GPU); "
        "the gradients then pass through bf16 activations: compare with float32 before trusting it"))
    scheduler: str = Field("asha", description="asha (Tune's ASHAScheduler over chunks or epochs) or fifo "
                                               "(every trial runs to the end)")
    eot_iter: int = Field(AttackSettings.model_fields["eot_iter"].default, ge=1, description="draws of the defense per EOT step")
    eot_steps: int = Field(AttackSettings.model_fields["eot_steps"].default, ge=1, description="steps of the EOT attacks")
    fgsm_eps: IntList = Field((8,), description="FGSM's eps in 1/255 when the suite holds fgsm: one run per eps")
    min_clean_acc: float | None = Field(None, ge=0, le=1, description="trials below this clean accuracy are "
                                                                      "infeasible (an Optuna constraint)")
    multi_objective: bool = Field(False, description="search the Pareto front of clean_acc, robust_acc and "
                                                     "passes (forward passes per image) with NSGA-II instead")
    # The audit of the finalists (smoothblock.audit), when the trials end.
    audit_top: int = Field(3, ge=0, description="how many of the best trials are audited (0: none, and no "
                                                "fresh images are needed)")
    audit_images: int = Field(1000, ge=1, description=(
        "fresh validation images the finalists and the undefended base are audited on: the ones after the "
        "search's val_images, which no trial saw, so the winner's figure is not selected on its own images"))
    # How it runs.
    name: str | None = Field(None, description="the search's name (MLflow experiment, results folder); "
                                               "null: the preset and the time")
    trials: int = Field(16, ge=1, description="number of trials")
    search_seed: int = Field(0, description="seeds the sampler and every trial's evaluation (base.seed seeds "
                                                 "training and the defense's own draws)")
    cpus_per_trial: float = Field(1.0, ge=0, description="CPUs of one trial")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs of one trial (fractions of a GPU allowed)")
    max_concurrent_trials: int | None = Field(None, ge=1, description="null: as many as the cluster's resources "
                                                                      "hold")
    max_failures: int = Field(1, ge=0, description="retries of a trial that raises, before it is recorded FAILED")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs (train) or chunks (posthoc) every trial gets")
    reduction_factor: int = Field(3, ge=2, description="ASHA: 1/reduction_factor of the trials go on at each "
                                                       "rung")

    @classmethod
    def source_name(cls) -> str:
        return "search configuration"

    @field_validator("trainable", "scheduler")
    @classmethod
    def _choice(cls, value: str, info) -> str:
        return one_of(value, {"trainable": TRAINABLES, "scheduler": SCHEDULERS}[info.field_name])

    @field_validator("attacks")
    @classmethod
    def _attacks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one attack")
        for attack in value:
            if attack not in ATTACKS or attack in AUDIT_ONLY:
                choices = ", ".join(a for a in ATTACKS if a not in AUDIT_ONLY)
                raise ValueError(f"unknown attack {attack!r}; choose from {choices}")
        if len(set(value)) != len(value):
            raise ValueError(f"each attack once, got {list(value)}")
        return value

    @field_validator("norm")
    @classmethod
    def _norm(cls, value: str) -> str:
        return one_of(value, tuple(NORMS))

    @field_validator("fgsm_eps")
    @classmethod
    def _fgsm_eps(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or not all(1 <= e <= 255 for e in value):
            raise ValueError(f"must be integers in 1..255 (units of 1/255), got {list(value)}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not NAME_PATTERN.match(value):
            raise ValueError(f"must be letters, digits, '.', '_' or '-' (at most 100), got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        if self.trainable == "posthoc" and not self.model:
            raise ValueError("a posthoc search needs a model to put the defense into")
        if self.cpus_per_trial == 0 and self.gpus_per_trial == 0:
            raise ValueError("a trial needs some resources: cpus_per_trial or gpus_per_trial > 0")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ValueError(f"gpus_per_trial above 1 must be whole, got {self.gpus_per_trial}")
        if self.val_images > self.base.val_size:
            raise ValueError(f"val_images ({self.val_images}) is more than the validation split holds "
                             f"(base.val_size {self.base.val_size})")
        if self.audit_top and self.val_images + self.audit_images > self.base.val_size:
            raise ValueError(f"val_images ({self.val_images}) and the fresh audit_images ({self.audit_images}) "
                             f"are more than the validation split holds (base.val_size {self.base.val_size})")
        settings = self.attack_settings()
        for attack in self.attacks:
            ATTACKS[attack].check_norm(settings)
        try:
            self.space.check(self.base)
            for point in self.points_to_evaluate:
                self.space.encode_point(point, self.base)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    # -- the objective -------------------------------------------------------------------

    @property
    def metric(self) -> str:
        """The reported metric the search maximises."""
        return METRIC

    def attack_settings(self) -> AttackSettings:
        """The attacks' parameters for every trial, the baseline and the audit: every image of a
        trial (and of the audit) gets every attack."""
        images = max(self.val_images, self.audit_images)
        return AttackSettings(norm=self.norm, eps=self.eps, eot_iter=self.eot_iter, eot_steps=self.eot_steps,
                              fgsm_eps=self.fgsm_eps, eot_images=images, cw_images=images)

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

    def to_dict(self) -> dict[str, Any]:
        """YAML-ready: ``base`` as the fields that differ from Config's defaults, ``space`` as written."""
        out = {name: getattr(self, name) for name in type(self).model_fields}
        out["base"] = _non_default(self.base)
        out["space"] = self.space.to_dict()
        out["points_to_evaluate"] = [dict(p) for p in self.points_to_evaluate]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _non_default(cfg: Config) -> dict[str, Any]:
    default = Config().to_dict()
    return {k: v for k, v in cfg.to_dict().items() if v != default[k]}


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML mapping from a file; ConfigError (one line) when missing, malformed or not a mapping."""
    return parse_yaml(read_text(path, what), str(path))


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
