"""The commands that run the library on one model: ``smoothblock train``, ``evaluate`` and
``reproduce`` (the search's own commands are in :mod:`search.cli`).

Bad input ends with one line on stderr and exit status 2 (:func:`search.cli.run`).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from smoothblock.attacks import ATTACKS, AttackSettings
from smoothblock.checkpoint import atomic_write
from smoothblock.config import FIELD_NAMES, METHODS, Config
from smoothblock.errors import ConfigError

from .flags import add_field_flags, add_shared, overrides
from .table import format_table

DEFENSE_FIELDS = ("positions", "block_size", "keep_prob", "gamma", "mean", "smooth_prob", "ensemble", "defense_at")
DEFAULT_ATTACKS = ("fgsm", "pgd", "transfer", "eot_pgd", "cw")
#: AttackSettings fields that are evaluate flags (fgsm_eps is fixed by the thesis' table).
ATTACK_FLAGS = tuple(name for name in AttackSettings.model_fields if name != "fgsm_eps")


def add_train(sub) -> None:
    train = sub.add_parser("train", help="train a (defended) model from a YAML configuration")
    train.add_argument("--config", required=True, help="YAML file of configuration fields")
    train.add_argument("--resume", action="store_true", help="continue from out_dir/last.pt")
    add_shared(train, "quiet")
    add_field_flags(train, Config, FIELD_NAMES)
    train.set_defaults(handler=run_train)


def add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="clean and robust accuracy, thesis-style table",
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
    add_shared(ev, "data")
    add_field_flags(ev, Config, ("val_size", "split_seed"))
    ev.add_argument("--json", default=None, help="write the metrics to this JSON file")
    ev.add_argument("--batch_size", "--batch-size", type=int, default=250, help="images per attack batch")
    add_shared(ev, "seed", "device", "cache_dir", "quiet")
    add_field_flags(ev, AttackSettings, ATTACK_FLAGS, show_defaults=True)
    add_field_flags(ev, Config, DEFENSE_FIELDS)
    ev.set_defaults(handler=run_evaluate)


def add_reproduce(sub) -> None:
    from reproduction.plan import BUDGETS, EXPERIMENT_IDS  # plain data: no torch work at import

    rp = sub.add_parser("reproduce", help="the thesis' experiments against an adaptive attacker, "
                                          "as a Markdown report with figures")
    rp.add_argument("--experiments", nargs="+", choices=EXPERIMENT_IDS, default=list(EXPERIMENT_IDS),
                    help="thesis experiments (default: all): 4.1 Table 4.1, 4.3 positions, 4.4 trained with the "
                         "regulariser, 4.5 trained and tested with it, 4.6 CAMs, 4.7 adversarial training, "
                         "4.8 self-ensemble")
    rp.add_argument("--budget", choices=list(BUDGETS), default="cpu",
                    help="smoke: a few images and one tiny epoch per missing model (a test of the pipeline, not "
                         "figures); cpu: 1,000 test images per cell; full: 10,000 (default: cpu)")
    add_shared(rp, "data")
    rp.add_argument("--out", default="docs/reproduction.md", help="the report; figures go beside it, in a "
                                                                  "folder named after it")
    rp.add_argument("--work_dir", "--work-dir", default="runs/reproduce",
                    help="where measured cells and models trained here are kept (a rerun reads them back)")
    rp.add_argument("--model_dir", "--model-dir", default=None,
                    help="a folder of NAME.safetensors used before the shipped weights")
    add_shared(rp, "device", "cache_dir", "seed", "quiet")
    rp.set_defaults(handler=run_reproduce)


def run_train(args: argparse.Namespace) -> int:
    from smoothblock.train import train

    cfg = Config.load(args.config)
    changes = overrides(args, FIELD_NAMES)
    if changes:
        cfg = cfg.replace(**changes)
    result = train(cfg, resume=args.resume, progress=not args.quiet)
    last = result.history[-1] if result.history else {}
    print(f"trained {cfg.arch} for {len(result.history)} epochs: val_acc {last.get('val_acc', float('nan')):.4f}; "
          f"weights in {result.weights_path}")
    return 0


def _row_models(args: argparse.Namespace, device) -> dict:
    """The table's rows, each a defended model built (and validated) before the long part starts."""
    from smoothblock.checkpoint import load_checkpoint
    from smoothblock.hub import apply_overrides, model_from_state, resolve

    defense = overrides(args, DEFENSE_FIELDS)
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
    for method in dict.fromkeys(methods):
        row = dict(defense)
        if method != "none" and "defense_at" not in row and saved.defense_at == "train":
            # A defended row means "defense on at test time", also for a model trained with it.
            row["defense_at"] = "both"
        if method == "none" or not args.each_position:
            models[method] = row_model(method=method, **row)
            continue
        for position in row.pop("positions", None) or saved.positions:
            models[f"{method}@{position}"] = row_model(method=method, positions=[position], **row)
    return models


def _dataset(args: argparse.Namespace, base_cfg: Config):
    from smoothblock.data import load_dataset, load_splits

    if args.split == "test":
        return load_dataset(args.data, "test", args.cache_dir)[0]
    split = base_cfg.replace(**overrides(args, ("val_size", "split_seed")))  # DataSpec's defaults unless given
    return load_splits(args.data, val_size=split.val_size, split_seed=split.split_seed, subset=0,
                       cache_dir=args.cache_dir, need_test=False, val_images=args.images).val


def run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from smoothblock.evaluation import evaluate
    from smoothblock.device import resolve_device

    if args.images < 1:
        raise ConfigError(f"--images must be >= 1, got {args.images}")
    settings = AttackSettings.from_dict(overrides(args, ATTACK_FLAGS), source="evaluate")
    device = resolve_device(args.device)
    models = _row_models(args, device)
    base_cfg = next(iter(models.values())).smoothblock_config
    dataset = _dataset(args, base_cfg)
    torch.set_grad_enabled(True)
    rows, seconds = {}, {}
    log = logging.getLogger(__name__)

    def write_report(complete: bool) -> None:
        # After every row, so a long evaluation that is stopped keeps the rows it finished; each
        # row is seeded on its own, so rows run apart equal rows run together.
        report = {"model": str(args.model), "data": args.data, "split": args.split, "seed": args.seed,
                  "complete": complete, "attack_settings": settings.to_dict(), "seconds": seconds,
                  "configs": {m: model.smoothblock_config.to_dict() for m, model in models.items()},
                  "metrics": rows}
        atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))

    for method, model in models.items():
        started = time.perf_counter()
        log.info("evaluating %s on %d %s images", method, min(args.images, len(dataset)), args.split)
        rows[method] = evaluate(model, dataset, attacks=tuple(args.attacks), images=args.images, cascade=args.cascade,
                                batch_size=args.batch_size, settings=settings, seed=args.seed,
                                device=device, num_classes=base_cfg.num_classes, progress=not args.quiet)
        seconds[method] = round(time.perf_counter() - started, 1)
        log.info("%s (%.0f s): %s", method, seconds[method], " ".join(f"{k}={v:.4f}" for k, v in rows[method].items()))
        if args.json:
            write_report(complete=len(rows) == len(models))
    print(format_table(rows, settings))
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    from reproduction import reproduce

    path = reproduce(experiments=tuple(args.experiments), budget=args.budget, data=args.data, out=args.out,
                     work_dir=args.work_dir, model_dir=args.model_dir, device=args.device,
                     cache_dir=args.cache_dir, seed=args.seed, progress=not args.quiet)
    print(f"wrote {path}")
    return 0
