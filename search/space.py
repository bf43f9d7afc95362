"""The search space over the defense (thesis Sections 4.2-4.5), as an Optuna define-by-run function.

A space maps :class:`smoothblock.Config` field names to one of:

* a scalar: the field is fixed (``keep_prob: 0.7``);
* a list: a categorical choice (``method: [smoothblock, dropblock]``; positions as lists of
  positions, ``positions: [[1], [2], [1, 2]]``);
* a mapping ``{low, high[, log, step]}``: an int range when both ends are ints, else a float range.

Parameters apply only where they mean something, so Optuna never models a value that has no effect:
``smooth_prob`` only for the mixed method; ``mean`` only where SmoothBlock can run; ``ensemble`` only when the model is random at test time;
the block parameters only for a defended method; the attack parameters only under adversarial
training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smoothblock import Config
from smoothblock.config import FIELD_NAMES
from smoothblock.errors import ConfigError
from smoothblock.settings import Settings

#: Fields a search may vary; the rest (data, recipe, ...) are fixed by the search's ``base``.
SEARCHABLE = ("method", "defense_at", "adv_training", "positions", "block_size", "keep_prob", "gamma", "mean",
              "smooth_prob", "ensemble", "adv_eps", "adv_alpha", "adv_steps", "adv_ratio", "lr", "weight_decay")
BLOCK_FIELDS = ("positions", "block_size", "keep_prob", "gamma", "mean")
ADV_FIELDS = ("adv_eps", "adv_alpha", "adv_steps", "adv_ratio")


class Param(Settings):
    """One dimension: ``choices`` (categorical) or ``low``/``high`` (range); ``fixed`` when one value.
    ``low`` and ``high`` keep their type: two integers are an integer range."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None

    @property
    def fixed(self) -> bool:
        return self.choices is not None and len(self.choices) == 1

    @property
    def integer(self) -> bool:
        return self.choices is None and isinstance(self.low, int) and isinstance(self.high, int)

    def values(self) -> tuple[Any, ...]:
        """The extreme values this dimension can take (for checking the space before a search)."""
        return self.choices if self.choices is not None else (self.low, self.high)

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            if self.name == "positions":  # Optuna's choices must be scalars: "1+2" stands for [1, 2]
                picked = trial.suggest_categorical(self.name, ["+".join(map(str, c)) for c in self.choices])
                return [int(p) for p in picked.split("+")]
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log, step=self.step)

    def to_yaml_value(self) -> Any:
        if self.choices is not None:
            value = [list(c) if isinstance(c, tuple) else c for c in self.choices]
            # A fixed position list stays a list of one choice: ``[1]`` would read back as two
            # choices, not one list.
            return value[0] if self.fixed and self.name != "positions" else value
        out = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


def parse_param(name: str, value: Any) -> Param:
    """A space entry from YAML -> :class:`Param`, type-checked against the Config field."""
    if name not in FIELD_NAMES:
        raise ConfigError(f"space: unknown parameter {name!r}")
    if name not in SEARCHABLE:
        raise ConfigError(f"space: {name} is not searchable; set it in base instead "
                          f"(searchable: {', '.join(SEARCHABLE)})")
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"low", "high", "log", "step"})
        if unknown or "low" not in value or "high" not in value:
            raise ConfigError(f"space: {name} must be a value, a list of choices or {{low, high[, log, step]}}")
        low, high = value["low"], value["high"]
        for end in (low, high):
            _check_value(name, end)
        if not low <= high:
            raise ConfigError(f"space: {name} has low {low} > high {high}")
        log = value.get("log", False)
        if not isinstance(log, bool) or (log and low <= 0):
            raise ConfigError(f"space: {name}: log must be true or false, and needs low > 0")
        return Param(name=name, low=low, high=high, log=log, step=value.get("step"))
    choices = value if isinstance(value, list) else [value]
    if not choices:
        raise ConfigError(f"space: {name} has an empty list of choices")
    if name == "positions":
        if not isinstance(value, list) or not all(isinstance(c, list) for c in choices):
            raise ConfigError("space: positions must be a list of position lists, e.g. [[1], [2], [1, 2]]")
        choices = [tuple(c) for c in choices]
    for choice in choices:
        _check_value(name, choice)
    if len(set(choices)) != len(choices):
        raise ConfigError(f"space: {name} repeats a choice")
    return Param(name=name, choices=tuple(choices))


def _check_value(name: str, value: Any) -> None:
    # Checked on its own, at the largest feature map; combinations (a block size against each
    # position) are checked in SearchSpace.check.
    value = list(value) if isinstance(value, tuple) else value
    Config.from_dict({"method": "smoothblock", "positions": [1], name: value}, source="space")


@dataclass(frozen=True)
class SearchSpace:
    """The parameters of a search, in a fixed order (a parameter's condition looks only backwards)."""

    params: tuple[Param, ...]

    @classmethod
    def from_dict(cls, data: Any) -> SearchSpace:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError("space must be a mapping of parameter: value, list or range")
        order = {name: i for i, name in enumerate(SEARCHABLE)}
        params = [parse_param(str(name), value) for name, value in data.items()]
        return cls(tuple(sorted(params, key=lambda p: order.get(p.name, len(order)))))

    def to_dict(self) -> dict[str, Any]:
        return {p.name: p.to_yaml_value() for p in self.params}

    def merged(self, changes: Any) -> SearchSpace:
        """This space with entries of ``changes`` replacing (narrowing, widening, fixing) its own."""
        if changes is None:
            return self
        if not isinstance(changes, dict):
            raise ConfigError("space must be a mapping of parameter: value, list or range")
        return SearchSpace.from_dict({**self.to_dict(), **changes})

    @property
    def searched(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if not p.fixed)

    def define_by_run(self, base: Config) -> DefineByRun:
        """The function OptunaSearch calls with each new trial."""
        return DefineByRun(self, {name: getattr(base, name) for name in SEARCHABLE})

    def encode_point(self, point: Any, base: Config) -> dict[str, Any]:
        """A starting point (``points_to_evaluate``), checked, in the form Optuna enqueues.

        A point names values of searched parameters; the ones it leaves out are sampled. Each value
        must lie in the space and have an effect (no ``smooth_prob`` for method smoothblock).
        """
        if not isinstance(point, dict) or not point:
            raise ConfigError("points_to_evaluate: each point must be a non-empty mapping of parameter: value")
        searched = {p.name: p for p in self.searched}
        fixed = {p.name: p.choices[0] for p in self.params if p.fixed}
        values = {name: getattr(base, name) for name in SEARCHABLE}
        values.update({k: list(v) if isinstance(v, tuple) else v for k, v in fixed.items()})
        values.update(point)
        for name, value in point.items():
            if name in fixed:  # a value the space fixes anyway: implied, unless it differs
                same = (tuple(value) if isinstance(value, list) else value) == fixed[name]
                if not same:
                    raise ConfigError(f"points_to_evaluate: {name} is fixed to {fixed[name]!r} "
                                      f"in the space, not {value!r}")
                continue
            param = searched.get(name)
            if param is None:
                raise ConfigError(f"points_to_evaluate: {name} is not a searched parameter of the space")
            if param.choices is not None:
                key = tuple(value) if name == "positions" and isinstance(value, list) else value
                if key not in param.choices:
                    raise ConfigError(f"points_to_evaluate: {name} {value!r} is not one of the space's choices")
            elif (isinstance(value, bool) or not isinstance(value, (int, float)) or not param.low <= value <= param.high
                  or (param.integer and not isinstance(value, int))):
                raise ConfigError(f"points_to_evaluate: {name} {value!r} is outside the space's "
                                  f"{'integer ' if param.integer else ''}range [{param.low}, {param.high}]")
            if not applies(name, values):
                raise ConfigError(f"points_to_evaluate: {name} has no effect with method {values.get('method')}"
                                  + (f" and defense_at {values.get('defense_at')}" if name == "ensemble" else ""))
        try:
            base.replace(**point)
        except ConfigError as exc:
            raise ConfigError(f"points_to_evaluate: {exc}") from None
        return {k: "+".join(map(str, v)) if k == "positions" else v for k, v in point.items() if k not in fixed}

    def check(self, base: Config) -> None:
        """Refuse, before any trial runs, a space with nothing to search or values the model can't take."""
        if not self.searched:
            raise ConfigError("the search space is empty: every parameter is fixed or none is given")
        blocks = next((p for p in self.params if p.name == "block_size"), None)
        positions = next((p for p in self.params if p.name == "positions"), None)
        biggest = max(blocks.values()) if blocks else base.block_size
        for choice in (positions.values() if positions and positions.choices else (base.positions,)):
            try:
                base.replace(method="smoothblock", positions=list(choice), block_size=biggest)
            except ConfigError as exc:
                raise ConfigError(f"space: {exc}") from None


@dataclass(frozen=True)
class DefineByRun:
    """Optuna define-by-run over ``space``; conditions read earlier choices, else the base's values.

    Returns the fixed parameters (and positions as a list) as constants; OptunaSearch merges them
    with the suggested values into the trial's parameters.
    """

    space: SearchSpace
    base_values: dict[str, Any]

    def __call__(self, trial: Any) -> dict[str, Any]:
        values = dict(self.base_values)
        constants: dict[str, Any] = {}
        for param in self.space.params:
            if not applies(param.name, values):
                continue
            if param.fixed:
                value = param.choices[0]
                values[param.name] = constants[param.name] = list(value) if isinstance(value, tuple) else value
            else:
                values[param.name] = param.suggest(trial)
                if param.name == "positions":
                    constants["positions"] = values["positions"]  # the list, not Optuna's "1+2"
        return constants


def applies(name: str, values: dict[str, Any]) -> bool:
    """Whether parameter ``name`` has an effect given the values chosen before it (or the base's)."""
    method = values.get("method")
    if name == "mean":  # DropBlock writes zeros; only SmoothBlock takes a mean
        return method in ("smoothblock", "mixed")
    if name in BLOCK_FIELDS:
        return method != "none"
    if name == "smooth_prob":
        return method == "mixed"
    if name == "ensemble":
        return method != "none" and values.get("defense_at") != "train"
    if name in ADV_FIELDS:
        return values.get("adv_training") != "none"
    return True
