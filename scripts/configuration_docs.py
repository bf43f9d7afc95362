"""Write docs/configuration.md from the configuration types themselves, so it cannot drift.

    python scripts/configuration_docs.py            # rewrite docs/configuration.md
    python scripts/configuration_docs.py --check    # exit 1 when the file is stale (the tests run this)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.config import SearchConfig
from smoothblock.attacks import AttackSettings
from smoothblock.config import DataSpec, ModelSpec, RunSpec, TrainSpec

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

INTRO = """# Configuration reference

Generated from the configuration types by `python scripts/configuration_docs.py`; do not edit by
hand. Every key has one name everywhere: the YAML key, the command-line flag (`--keep_prob`; the
spelling `--keep-prob` is accepted too), the MLflow parameter and the Python argument. Unknown keys,
wrong types and values out of range are refused in one line that names the key.

A model configuration (`smoothblock train --config FILE`, `base:` of a search, an export) is flat:
the keys of the four sections below side by side. The sections say what each key is about: what a
model **is** (saved with its weights), where it **came from** (saved beside the weights as a
record, never read back as a setting), and how one run **executes** (never saved with weights).
"""


def _default(info) -> str:
    if info.default_factory is not None:
        return "the defaults above" if "Config" in str(info.annotation) else "empty"
    value = info.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _type(info) -> str:
    text = str(info.annotation).replace("typing.", "").replace("NoneType", "null")
    text = text.replace("tuple[int, ...]", "list of int").replace("tuple[str, ...]", "list of str")
    text = text.replace("tuple[int | float, ...]", "list of numbers")
    text = text.replace("tuple[dict[str, Any], ...]", "list of mappings").replace("<class '", "").replace("'>", "")
    text = text.replace(" | ", " or ").replace("smoothblock.config.Config", "mapping (model configuration)")
    text = text.replace("search.space.SearchSpace", "mapping (space)")
    return text


def _bounds(info) -> str:
    parts = []
    for item in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                parts.append(f"{sign} {getattr(item, attr)}")
    return ", ".join(parts)


def table(settings: type, names: tuple[str, ...] | None = None) -> list[str]:
    lines = ["| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for name, info in settings.model_fields.items():
        if names is not None and name not in names:
            continue
        description = (info.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {_type(info)} | `{_default(info)}` | {_bounds(info)} | {description} |")
    return lines


def render() -> str:
    out = [INTRO]
    for title, section in (("What a model is (`ModelSpec`, saved with the weights)", ModelSpec),
                           ("Data (`DataSpec`, provenance)", DataSpec),
                           ("Training (`TrainSpec`, provenance)", TrainSpec),
                           ("How a run executes (`RunSpec`, never saved with weights)", RunSpec)):
        out += [f"## {title}", "", (section.__doc__ or "").strip(), "", *table(section), ""]
    out += ["## A search (`smoothblock search --config FILE`)", "",
            "A preset (`search/presets/*.yaml`) is overlaid by `--config FILE` (`base` and `space` merge key by "
            "key), then by the flags; `base` holds the model configuration keys above that every trial shares, "
            "`space` the ones Optuna varies.", "", *table(SearchConfig), ""]
    out += ["## The attacks (`AttackSettings`, `smoothblock evaluate --FIELD`)", "",
            (AttackSettings.__doc__ or "").strip().replace("\n   ", "").replace("\n", " "), "",
            "A search sets `norm`, `eps`, `eot_iter`, `eot_steps` and `fgsm_eps` from its own keys above, and runs "
            "every attack on all of its images (`eot_images`, `cw_images`); the rest keep these defaults.", "", *table(AttackSettings), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/configuration.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC} is stale: run python scripts/configuration_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
