"""The ``smoothblock`` console script, the project's one command line: ``train``, ``evaluate`` and
``reproduce`` (:mod:`search.model_commands`), ``search``, ``export``, ``report`` and ``ui`` (here).
It lives in the application, so the library (:mod:`smoothblock`) imports no command line.

Bad input ends with one line on stderr and exit status 2, before anything is created.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from urllib.parse import urlparse

from smoothblock.errors import SmoothBlockError

from . import model_commands
from .config import SearchConfig, list_presets
from .flags import OneLineParser, add_field_flags, add_shared
from .serve import serve

#: Search settings that are also flags (the rest live in the YAML: base, space, points_to_evaluate).
FLAGS = tuple(name for name in SearchConfig.model_fields
              if name not in ("base", "space", "points_to_evaluate", "trainable", "multi_objective"))


def add_search_commands(sub) -> None:
    search = sub.add_parser("search", help="launch (or --resume) a search on a Ray cluster, logged to MLflow")
    search.add_argument("--preset", choices=list_presets(), default=None,
                        help="posthoc (defense into the shipped model; the default without --config), train, or "
                             "adv (adversarial training)")
    search.add_argument("--config", default=None, help="YAML search configuration; with --preset it overrides the preset "
                             "(base and space merge key by key)")
    search.add_argument("--resume", metavar="NAME", default=None, help="finish the interrupted search NAME")
    add_shared(search, "data", default=None, help="base.data: cifar10 (torchvision download) or an ImageFolder folder")
    add_field_flags(search, SearchConfig, FLAGS)
    search.add_argument("--address", default=None, help="auto or HOST:PORT of a Ray cluster (default: a local Ray)")
    add_shared(search, "mlflow_uri")
    search.add_argument("--storage", default=None,
                        help="results and checkpoints: a path every node sees, or s3://... (default ./ray_results)")
    search.add_argument("--verbose", action="store_true",
                        help="Ray Tune's per-trial tables, the workers' output and Ray's warnings, instead of one "
                             "line per finished trial and a progress bar")
    search.set_defaults(handler=run_search)

    export = sub.add_parser("export", help="write a search's best configurations for smoothblock train --config")
    export.add_argument("name", help="the search's name")
    which = export.add_mutually_exclusive_group()
    which.add_argument("--top", type=int, default=1, help="the K best trials (default 1)")
    which.add_argument("--pareto", action="store_true", help="the Pareto front (clean_acc, robust accuracy, passes)")
    export.add_argument("-o", "--output", default="best.yaml", help="file to write (several: best-1.yaml, ...)")
    add_shared(export, "mlflow_uri")
    export.set_defaults(handler=run_export)

    rep = sub.add_parser("report", help="a search's summary from MLflow: best trials, audit, Pareto front, "
                                          "parameter importances")
    rep.add_argument("name", help="the search's name")
    rep.add_argument("-o", "--output", default=None, help="also write it as Markdown to this file")
    add_shared(rep, "mlflow_uri")
    rep.set_defaults(handler=run_report)

    ui = sub.add_parser("ui", help="the MLflow UI for the tracking store in use, on 127.0.0.1")
    add_shared(ui, "mlflow_uri")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000, help="port of the UI")
    ui.set_defaults(handler=run_ui)


def run_search(args: argparse.Namespace) -> int:
    from . import faults

    try:
        return _search(args)
    except faults.SearchStopped as stopped:
        # The fault in one line naming the way on; its traceback in the log file the line names.
        message, status = faults.line(stopped.error, stopped.where)
        faults.close_progress_bars()
        print(message, file=sys.stderr)
        return status


def _search(args: argparse.Namespace) -> int:
    from smoothblock.errors import ConfigError

    from . import tuner
    from .report import print_summary

    if not args.verbose:
        # MLflow's own reports of a refused write and urllib3's of each retry: the search says it
        # once. (After tuner's import, which sets MLflow's logger to WARNING.)
        logging.getLogger("mlflow").setLevel(logging.CRITICAL)
        logging.getLogger("urllib3").setLevel(logging.ERROR)
    if args.resume:
        given = (args.preset, args.config, args.data, *(getattr(args, name) for name in FLAGS))
        if any(value is not None for value in given):
            raise ConfigError("--resume NAME takes the search's own configuration; drop the other search options")
        outcome = tuner.resume(args.resume, address=args.address, mlflow_uri=args.mlflow_uri, storage=args.storage,
                               verbose=args.verbose)
    else:
        from .config import compose

        preset = "posthoc" if args.preset is None and args.config is None else args.preset
        search = compose(preset, args.config, data=args.data, **{name: getattr(args, name) for name in FLAGS})
        outcome = tuner.launch(search, address=args.address, mlflow_uri=args.mlflow_uri, storage=args.storage,
                               verbose=args.verbose)
    print_summary(outcome)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .export import export

    for path in export(args.name, args.output, top=args.top, pareto=args.pareto, mlflow_uri=args.mlflow_uri):
        print(f"wrote {path}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from .report import report

    print(report(args.name, args.output, args.mlflow_uri), end="")
    if args.output:
        print(f"wrote {args.output}")
    return 0


def run_ui(args: argparse.Namespace) -> int:
    from .tracking import connect, resolve_tracking_uri

    uri = resolve_tracking_uri(args.mlflow_uri)
    if urlparse(uri).scheme in ("http", "https"):
        print(f"the tracking server already serves its UI: open {uri}")
        return 0
    connect(uri)  # creates a new sqlite store under its lock, so a search starting now finds it whole
    print(f"MLflow UI for {uri} at http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", args.host,
               "--port", str(args.port), "--workers", "1"]
    return serve(command)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="smoothblock", description="SmoothBlock: train, evaluate and search defended models")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    model_commands.add_train(sub)
    model_commands.add_evaluate(sub)
    model_commands.add_reproduce(sub)
    add_search_commands(sub)
    return parser


class OneLine(logging.Formatter):
    """A log record as its message's first line: no traceback reaches the terminal (a stopped
    search writes its own to the log file its error line names)."""

    def format(self, record: logging.LogRecord) -> str:
        lines = record.getMessage().strip().splitlines()
        return lines[0] if lines else ""


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; bad input -> one line on stderr and status 2."""
    handler = logging.StreamHandler()
    handler.setFormatter(OneLine())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        return args.handler(args)
    except SmoothBlockError as exc:
        print(f"smoothblock: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("smoothblock: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    # One line per problem on stderr: MLflow's download progress bars would bury it. MLflow also
    # prints two links per finished run, with the tracking URI's password in them; the summary
    # names the experiment once, without it.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
