"""Command-line flags, generated in one place from the configuration types.

Every flag that sets a configuration field is made by :func:`add_field_flags` from the field
itself (its type, its description, its default), so a field has one name in YAML, on the command
line (``--keep_prob``, with the alias ``--keep-prob``), in MLflow and in Python. The few flags
that are not fields (where a command runs, where its output goes) are declared once, in
:data:`SHARED`, and added by name.
"""
from __future__ import annotations

import argparse
import typing

from pydantic import BaseModel


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it or there is none
    to say (a flag, or a None that the help explains)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default in (None, False, argparse.SUPPRESS) or action.required
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


class OneLineParser(argparse.ArgumentParser):
    """argparse with :class:`HelpFormatter`, and an error that is one line (not usage + message)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _flags(name: str) -> list[str]:
    return [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])


def add_field_flags(parser: argparse.ArgumentParser, settings: type[BaseModel], names: typing.Iterable[str],
                    *, show_defaults: bool = False) -> None:
    """``--name`` (and the alias ``--na-me``) for fields of a settings class, typed and described
    by the fields themselves. Every flag defaults to None ("not given"), so :func:`overrides`
    returns only what the user set and the rest comes from wherever the command takes it; with
    ``show_defaults`` (where the type's defaults are what applies) the help says them."""
    for name in names:
        info = settings.model_fields[name]
        args = typing.get_args(info.annotation)
        base = next(a for a in args if a is not type(None)) if type(None) in args else info.annotation
        if typing.get_origin(base) is typing.Annotated:
            base = typing.get_args(base)[0]
        # Elsewhere no "(default: ...)": what a flag left out means is the caller's (the
        # configuration file, the preset, the checkpoint's value), not the type's default.
        described = (info.description or "").replace("%", "%%")
        if show_defaults and info.default is not None and "default" not in described:
            described += f" (default: {info.default:g})" if isinstance(info.default, float) \
                else f" (default: {info.default})"
        if typing.get_origin(base) is tuple:
            item = typing.get_args(base)[0]
            parser.add_argument(*_flags(name), dest=name, type=item, nargs="+", default=None,
                                metavar=name.upper()[:-1] if name.endswith("s") else name.upper(), help=described)
        elif base is bool:
            parser.add_argument(*_flags(name), dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=described)
        else:
            parser.add_argument(*_flags(name), dest=name, type=base, default=None, help=described)


def overrides(args: argparse.Namespace, names: typing.Iterable[str]) -> dict[str, typing.Any]:
    """The fields among ``names`` that the command line set."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


_STORE = "tracking store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)"

#: Flags that are not configuration fields, each declared once: name -> add_argument keywords.
SHARED: dict[str, dict[str, typing.Any]] = {
    "data": {"default": "cifar10", "help": "cifar10 (torchvision's download) or a folder of CIFAR-10 in "
                                           "ImageFolder layout"},
    "device": {"default": "auto", "help": "auto (a GPU when there is one), cpu, cuda or cuda:N"},
    "cache_dir": {"default": None, "help": "where downloads and decoded images go (default: ~/.cache/smoothblock)"},
    "seed": {"type": int, "default": 0, "help": "seeds the defense's draws, random starts and C&W targets"},
    "quiet": {"action": "store_true", "help": "no progress bars"},
    "mlflow_uri": {"default": None, "help": _STORE},
}


def add_shared(parser: argparse.ArgumentParser, *names: str, **changes: typing.Any) -> None:
    """Add shared flags by name; ``changes`` (``help=`` or ``default=``) apply to all of them."""
    for name in names:
        parser.add_argument(*_flags(name), dest=name, **{**SHARED[name], **changes})
