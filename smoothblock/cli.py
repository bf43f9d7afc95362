"""The library's commands: ``smoothblock train``, ``evaluate`` and ``reproduce``.

:func:`add_commands` adds them to any argparse sub-parser set, so a higher-level console script
(the search) can wire them in without this package importing anything above it.
Bad input ends with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
import typing
from pathlib import Path

from .attacks import ATTACKS, AttackSettings
from .checkpoint import atomic_write
from .config import FIELD_NAMES, METHODS, Config
from .errors import ConfigError, SmoothBlockError

DEFENSE_FIELDS = ("positions", "block_size", "keep_prob", "gamma", "mean", "smooth_prob", "ensemble", "defense_at")
DEFAULT_ATTACKS = ("fgsm", "pgd", "transfer", "eot_pgd", "cw")


def columns(settings: AttackSettings = AttackSettings()) -> list[tuple[str, str]]:
    """(metric, title) of the evaluation table, in registry order; ``worst`` is ``robust_acc``."""
    cols = [("clean_acc", "clean")]
    for name, attack in ATTACKS.items():
        if attack.per_eps:
            cols += [(f"{name}_{e}_acc", f"{attack.title} {e}") for e in settings.fgsm_eps]
        else:
            cols.append((f"{name}_acc", f"{attack.title} acc" if attack.targeted else attack.title))
        if attack.targeted:
            cols.append((f"{name}_asr", f"{attack.title} ASR"))
    return (cols + [(f"worst_fgsm_{e}_acc", f"worst FGSM {e}") for e in settings.fgsm_eps]
            + [(f"{name}_broke", f"{a.title} broke") for name, a in ATTACKS.items()] + [("robust_acc", "worst")])


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
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:  # one line, not usage + message
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_field_flags(parser: argparse.ArgumentParser, settings: type, names: tuple[str, ...]) -> None:
    """``--name`` (and the alias ``--na-me``) for fields of a settings class (:class:`Config`,
    the search's), typed and described by the fields themselves: one name in YAML and on the
    command line."""
    for name in names:
        info = settings.model_fields[name]
        args = typing.get_args(info.annotation)
        base = next(a for a in args if a is not type(None)) if type(None) in args else info.annotation
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        described = (info.description or "").replace("%", "%%")
        if typing.get_origin(base) is tuple:
            item = typing.get_args(base)[0]
            parser.add_argument(*flags, dest=name, type=item, nargs="+", default=None,
                                metavar=name.upper()[:-1] if name.endswith("s") else name.upper(), help=described)
        elif base is bool:
            parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=described)
        else:
            parser.add_argument(*flags, dest=name, type=base, default=None, help=described)


def _overrides(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def add_commands(subparsers) -> None:
    """Add ``train``, ``evaluate`` and ``reproduce`` to an argparse sub-parser set."""
    train = subparsers.add_parser("train", help="train a (defended) model from a YAML configuration")
    train.add_argument("--config", required=True, help="YAML file of configuration fields")
    train.add_argument("--resume", action="store_true", help="continue from out_dir/last.pt")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    add_field_flags(train, Config, FIELD_NAMES)
    train.set_defaults(handler=run_train)

    ev = subparsers.add_parser("evaluate", help="clean and robust accuracy, thesis-style table",
                               description="Clean and robust accuracy of a model with a defense, thesis-style. "
                                           "Defense options left out keep the checkpoint's values.")
    ev.add_argument("--model", required=True, help="a shipped model name or a checkpoint file")
    ev.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                    help="table rows (default: none dropblock smoothblock; with --config: none and its "
                         "method); the defense options below apply to every defended row")
    ev.add_argument("--config", default=None,
                    help="take the defense (method, positions, block_size, ...) from this configuration "
                         "file, for example one `smoothblock export` wrote; the flags below override it")
    ev.add_argument("--each_position", "--each-position", action="store_true",
                    help="one row per position in --positions for each defended method (thesis "
                         "Figure 4.3), instead of one row with the defense at all of them")
    ev.add_argument("--attacks", nargs="+", choices=list(ATTACKS), default=list(DEFAULT_ATTACKS), metavar="ATTACK",
                    help="from the registry, run in this order: " + "; ".join(  # argparse formats help with %
                        f"{a.name} ({a.summary}; {a.cost(AttackSettings())} passes per image)".replace("%", "%%")
                        for a in ATTACKS.values())
                    + f" (default: {' '.join(DEFAULT_ATTACKS)}). The worst column counts an image robust only "
                      "if every attack left it")
    ev.add_argument("--cascade", action="store_true",
                    help="run each expensive attack only on the images the attacks before it left (AutoAttack's "
                         "way): the same worst case for less; those attacks then report what they broke")
    ev.add_argument("--images", type=int, default=1000,
                    help="number of images scored, the first of the split (C&W, the EOT attacks, Square: at most "
                         "--cw_images and --eot_images of them)")
    ev.add_argument("--split", choices=["test", "val"], default="test",
                    help="test, or val: the validation images searches score on (never trained on)")
    ev.add_argument("--data", default="cifar10",
                    help="cifar10 (torchvision's download) or a folder of CIFAR-10 in ImageFolder layout "
                         "(default: cifar10)")
    add_field_flags(ev, Config, ("val_size", "split_seed"))
    ev.add_argument("--json", default=None, help="write the metrics to this JSON file")
    ev.add_argument("--batch_size", "--batch-size", type=int, default=250, help="images per attack batch")
    ev.add_argument("--seed", type=int, default=0, help="seeds the defense's draws, random starts and C&W targets")
    ev.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    ev.add_argument("--cache_dir", "--cache-dir", default=None,
                    help="where downloads and decoded images go (default: ~/.cache/smoothblock)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    for f in dataclasses.fields(AttackSettings):
        if f.name != "fgsm_eps":
            ev.add_argument(*dict.fromkeys((f"--{f.name}", f"--{f.name.replace('_', '-')}")), dest=f.name,
                            type=f.metadata["type"], default=f.default, choices=f.metadata["choices"],
                            help=f.metadata["help"].replace("%", "%%"))
    add_field_flags(ev, Config, DEFENSE_FIELDS)
    ev.set_defaults(handler=run_evaluate)

    from .reproduce.plan import BUDGETS, EXPERIMENT_IDS  # plain data: no torch work at import
    rp = subparsers.add_parser("reproduce", help="the thesis' experiments against an adaptive attacker, "
                                                 "as a Markdown report with figures")
    rp.add_argument("--experiments", nargs="+", choices=EXPERIMENT_IDS, default=list(EXPERIMENT_IDS),
                    help="thesis experiments (default: all): 4.1 Table 4.1, 4.3 positions, 4.4 trained with the "
                         "regulariser, 4.5 trained and tested with it, 4.6 CAMs, 4.7 adversarial training, "
                         "4.8 self-ensemble")
    rp.add_argument("--budget", choices=list(BUDGETS), default="cpu",
                    help="smoke: a few images and one tiny epoch per missing model (a test of the pipeline, not "
                         "figures); cpu: 1,000 test images per cell; full: 10,000 (default: cpu)")
    rp.add_argument("--data", default="cifar10", help="cifar10 (torchvision's download) or a CIFAR-10 ImageFolder")
    rp.add_argument("--out", default="docs/reproduction.md", help="the report; figures go beside it, in a "
                                                                  "folder named after it")
    rp.add_argument("--work_dir", "--work-dir", default="runs/reproduce",
                    help="where measured cells and models trained here are kept (a rerun reads them back)")
    rp.add_argument("--model_dir", "--model-dir", default=None,
                    help="a folder of NAME.safetensors used before the shipped weights")
    rp.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    rp.add_argument("--cache_dir", "--cache-dir", default=None,
                    help="where downloads and decoded images go (default: ~/.cache/smoothblock)")
    rp.add_argument("--seed", type=int, default=0, help="seeds the defense's draws, random starts and C&W targets")
    rp.add_argument("--quiet", action="store_true", help="no progress bars")
    rp.set_defaults(handler=run_reproduce)



def run_train(args: argparse.Namespace) -> int:
    from .train import train

    cfg = Config.load(args.config)
    overrides = _overrides(args, FIELD_NAMES)
    if overrides:
        cfg = cfg.replace(**overrides)
    result = train(cfg, resume=args.resume, progress=not args.quiet)
    last = result.history[-1] if result.history else {}
    print(f"trained {cfg.arch} for {len(result.history)} epochs: val_acc {last.get('val_acc', float('nan')):.4f}; "
          f"weights in {result.weights_path}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .data import load_dataset, load_splits
    from .evaluation import evaluate
    from .checkpoint import load_checkpoint
    from .hub import apply_overrides, model_from_state, resolve
    from .train import resolve_device

    if args.images < 1:
        raise ConfigError(f"--images must be >= 1, got {args.images}")
    device = resolve_device(args.device)
    defense = _overrides(args, DEFENSE_FIELDS)
    methods = args.methods or ["none", "dropblock", "smoothblock"]
    if args.config:
        exported = Config.load(args.config)
        defense = {**{k: getattr(exported, k) for k in DEFENSE_FIELDS}, **defense}
        methods = args.methods or ["none", exported.method]
    path = resolve(args.model)
    saved, state_dict = load_checkpoint(path)  # read once; every row is built from it

    def row_model(**fields):
        return model_from_state(apply_overrides(saved, path, **fields), state_dict, device=device, source=path)

    models = {}
    for method in dict.fromkeys(methods):  # build (and validate) every row before the long part starts
        row = dict(defense)
        if method != "none" and "defense_at" not in row and saved.defense_at == "train":
            # A defended row means "defense on at test time", also for a model trained with it.
            row["defense_at"] = "both"
        if method == "none" or not args.each_position:
            models[method] = row_model(method=method, **row)
            continue
        for position in row.pop("positions", None) or saved.positions:
            models[f"{method}@{position}"] = row_model(method=method, positions=[position], **row)
    base_cfg = next(iter(models.values())).smoothblock_config
    data = args.data
    if args.split == "test":
        dataset, _ = load_dataset(data, "test", args.cache_dir)
    else:  # the split searches score on (DataSpec's defaults unless given)
        split = base_cfg.replace(**_overrides(args, ("val_size", "split_seed")))
        dataset = load_splits(data, val_size=split.val_size, split_seed=split.split_seed,
                              cache_dir=args.cache_dir, need_test=False).val
    settings = AttackSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AttackSettings)
                                 if f.name != "fgsm_eps"})
    torch.set_grad_enabled(True)
    rows, seconds = {}, {}

    def write_report(complete: bool) -> None:
        # After every row, so a long evaluation that is stopped keeps the rows it finished; each
        # row is seeded on its own, so rows run apart equal rows run together.
        report = {"model": str(args.model), "data": data, "split": args.split, "seed": args.seed,
                  "complete": complete, "attack_settings": dataclasses.asdict(settings), "seconds": seconds,
                  "configs": {m: model.smoothblock_config.to_dict() for m, model in models.items()},
                  "metrics": rows}
        atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))

    for method, model in models.items():
        started = time.perf_counter()
        logging.getLogger(__name__).info("evaluating %s on %d %s images", method, min(args.images, len(dataset)), args.split)
        rows[method] = evaluate(model, dataset, attacks=tuple(args.attacks), images=args.images, cascade=args.cascade,
                                batch_size=args.batch_size, settings=settings, seed=args.seed,
                                device=device, num_classes=base_cfg.num_classes, progress=not args.quiet)
        seconds[method] = round(time.perf_counter() - started, 1)
        logging.getLogger(__name__).info("%s (%.0f s): %s", method, seconds[method],
                                         " ".join(f"{k}={v:.4f}" for k, v in rows[method].items()))
        if args.json:
            write_report(complete=len(rows) == len(models))
    print(format_table(rows, settings))
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce

    path = reproduce(experiments=tuple(args.experiments), budget=args.budget, data=args.data, out=args.out,
                     work_dir=args.work_dir, model_dir=args.model_dir, device=args.device,
                     cache_dir=args.cache_dir, seed=args.seed, progress=not args.quiet)
    print(f"wrote {path}")
    return 0


def format_table(rows: dict[str, dict[str, float]], settings: AttackSettings = AttackSettings()) -> str:
    """The thesis-style table (percent): one row per method (``method`` or ``method@position``),
    the columns that were measured; a column measured on fewer images than the rest says on how many."""
    names = {"none": "no defense", "dropblock": "DropBlock", "smoothblock": "SmoothBlock", "mixed": "mixed"}
    cols = [(key, title) for key, title in columns(settings) if any(key in r for r in rows.values())]
    first = next(iter(rows.values()), {})
    fewer = {f"{name}_{kind}": attack.limit for name, attack in ATTACKS.items() if attack.limit
             for kind in ("acc", "asr", "broke")}
    fewer["robust_acc"] = "robust_images"
    titles = [f"{title} ({first[fewer[key]]})" if key in fewer and first.get(fewer[key], 0) < first.get("images", 0)
              else title for key, title in cols]
    header = "| defense | " + " | ".join(titles) + " |"
    lines = [header, "|" + " --- |" * (len(cols) + 1)]
    for label, metrics in rows.items():
        method, _, position = label.partition("@")
        name = names.get(method, method) + (f", position {position}" if position else "")
        cells = [f"{100 * metrics[key]:.2f}" if key in metrics else "-" for key, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="smoothblock", description="SmoothBlock: train and evaluate defended models")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_commands(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; bad input -> one line on stderr and status 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.handler(args)
    except SmoothBlockError as exc:
        print(f"smoothblock: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("smoothblock: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
