"""The project's one configuration mechanism: typed settings validated by pydantic.

Every configuration (the model, its data and training, how a run executes, a whole search) is a
:class:`Settings` subclass, so all of them share one unknown-key check (``extra="forbid"``), one
type check (pydantic's strict mode: no ``"3"`` for 3, no ``true`` for 1), one YAML reader
(:func:`parse_yaml`) and one error formatter (:func:`one_line`): a ``ConfigError`` of one line
that names the source and the key. Each field's ``description`` is its documentation;
``docs/configuration.md`` is generated from them (``python scripts/configuration_docs.py``).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Any

from typing_extensions import Self

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from .errors import ConfigError


def as_tuple(value: Any) -> Any:
    # YAML and argparse give lists; the settings are frozen, so they hold tuples.
    return tuple(value) if isinstance(value, list) else value


#: A list of integers / strings in YAML, a tuple in Python.
IntList = Annotated[tuple[int, ...], BeforeValidator(as_tuple)]
StrList = Annotated[tuple[str, ...], BeforeValidator(as_tuple)]


class Settings(BaseModel):
    """Frozen, strictly typed settings; unknown keys are refused. Derive variants with
    :meth:`replace`, which validates again."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=False)

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> Self:
        """Build from a mapping; ConfigError of one line naming ``source`` and the key otherwise."""
        source = source or cls.source_name()
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"{source} must be a mapping of key: value, not a {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(one_line(exc, source)) from None

    @classmethod
    def source_name(cls) -> str:
        return "configuration"

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied and validated (unknown names are refused)."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready values (tuples as lists), every field."""
        return _plain(self.model_dump())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, *, source: str | None = None) -> Self:
        source = source or cls.source_name()
        return cls.from_dict(parse_yaml(text, source), source=source)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        return cls.from_yaml(read_text(path, "configuration file"), source=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")


def one_of(value: str, allowed: tuple[str, ...]) -> str:
    """``value`` when it is one of ``allowed`` (a field validator's check of a choice)."""
    if value not in allowed:
        raise ValueError(f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def one_line(exc: ValidationError, source: str) -> str:
    """pydantic's first error as one line: ``SOURCE: KEY: what is wrong``."""
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{source}: unknown key {where!r}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] in ("missing",):
        message = "is required"
    elif "input" in error and error["type"] not in ("value_error", "assertion_error"):
        shown = repr(error["input"])
        message = f"{message}, got {shown if len(shown) <= 80 else shown[:77] + '...'}"
    if not where or message.startswith(f"{where}:") or message.startswith(f"{where} "):
        return f"{source}: {message}"
    return f"{source}: {where}: {message}"


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


def read_text(path: str | Path, what: str) -> str:
    """A text file's content; ConfigError (one line) when missing or not text."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file") from None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
