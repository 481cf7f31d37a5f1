"""hematune: Optuna search and honest model selection for white-blood-cell image classifiers.

The command line behind the Makefile's targets.

Every user error (bad data, bad setting, unreachable storage…) ends as one
line on stderr and exit status 2, never a traceback; Ctrl-C ends with 130
after the running trial has been recorded as failed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search import interrupts
from search.environment import quiet_backend_logs, select_backend

quiet_backend_logs()  # before anything imports TensorFlow
select_backend()  # before anything imports Keras: JAX on a visible GPU, or GPU=0 hides the GPUs

# The command modules import no backend at module level, so --help stays fast.
from reports.commands import COMMANDS as REPORT_COMMANDS  # noqa: E402
from reports.commands import add_parsers as add_report_parsers  # noqa: E402
from search.workers import add_worker_command, cmd_worker  # noqa: E402
from serving.commands import COMMANDS as SERVE_COMMANDS  # noqa: E402
from serving.commands import add_parser as add_serve_parser  # noqa: E402


def _positive_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hematune", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    search = commands.add_parser("search", help="run (or resume) a hyperparameter search",
                                 description="Run or resume an Optuna study on a folder-per-class image set.")
    search.add_argument("--model", default="cnn", help="family: cnn, efficientnet, mobilenet, resnet, vgg or all")
    search.add_argument("--data", required=True, help="DATA folder: ROOT/TRAIN/<class>/ + ROOT/TEST/<class>/, or ROOT/<class>/")
    search.add_argument("--study", help="study name (default: <model>-<data folder name>)")
    search.add_argument("--storage", help="SQLAlchemy URL (default: sqlite:///studies/hematune.db)")
    search.add_argument("--studies-dir", default="studies", type=Path, help="where the default database, split "
                        "manifests and trial models live (default: studies)")
    search.add_argument("--trials", type=_positive_int, default=20, help="finished trials the study should have (default 20)")
    search.add_argument("--timeout", type=_number, help="wall-clock budget of the study's trials, seconds")
    search.add_argument("--max-epochs", type=_positive_int, help="epoch cap per trial (default: the space file's)")
    search.add_argument("--groups", default="auto", help="grouping rule: auto, filename, filename:<regex>, "
                        "csv:<file>, none (default auto)")
    search.add_argument("--val-fraction", type=_number, default=0.2, help="share of TRAIN groups used for validation")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--pruner", default="hyperband", help="hyperband (default), median or none")
    search.add_argument("--weights", help="imagenet (backbone default), none, or a weights file path")
    search.add_argument("--space", help="a search-space YAML file instead of studies/spaces/<model>.yaml")
    search.add_argument("--fix", action="append", default=[], metavar="NAME=VALUE",
                        help="pin a parameter of the space (repeatable), e.g. --fix version=v1")
    search.add_argument("--keep-top", type=_positive_int, default=3, help="trials that keep a model file (default 3)")
    search.add_argument("--workers", type=_positive_int, default=1,
                        help="local worker processes sharing the study (default 1); see `hematune worker`")
    search.add_argument("--precision", default="auto", help="auto (default: mixed_bfloat16 on GPUs with bfloat16, "
                        "mixed_float16 on older GPUs, float32 on CPU), float32, mixed_bfloat16 or mixed_float16")
    add_worker_command(commands)

    dashboard = commands.add_parser("dashboard", help="browse studies in optuna-dashboard (127.0.0.1 only)",
                                    description="Serve optuna-dashboard on the study storage, bound to 127.0.0.1.")
    dashboard.add_argument("--storage", help="SQLAlchemy URL (default: sqlite:///<studies-dir>/hematune.db)")
    dashboard.add_argument("--studies-dir", default="studies", type=Path, help="where trial artifacts live "
                           "(default: studies)")
    dashboard.add_argument("--port", type=_positive_int, default=8080, help="port on 127.0.0.1 (default 8080)")
    dashboard.add_argument("--study", help="print the URL of this study's page")
    add_report_parsers(commands)  # report, export, promote, verify, predict
    add_serve_parser(commands)  # serve
    return parser


def cmd_search(args) -> int:
    from search.runner import SearchConfig, run_search
    from search.space import parse_fixed

    fixed = parse_fixed([item for chunk in args.fix for item in chunk.split()])
    config = SearchConfig(
        data=args.data, model=args.model, study=args.study, storage=args.storage, studies_dir=args.studies_dir,
        trials=args.trials, timeout=args.timeout, max_epochs=args.max_epochs, groups=args.groups,
        val_fraction=args.val_fraction, seed=args.seed, pruner=args.pruner, weights=args.weights,
        space_file=args.space, fixed=fixed, keep_top=args.keep_top, precision=args.precision,
    )
    if args.workers != 1:  # N local processes on one study (search/workers.py)
        from search.workers import search_with_workers

        return search_with_workers(config, args.workers)
    outcome = run_search(config)
    study = outcome.study
    from search.progress import TerminalReporter
    from search.summary import print_summary

    print_summary(study, Path(args.studies_dir), TerminalReporter(study).console)
    if outcome.stopped_by_failures:
        print(f"hematune: error: stopped after {config.max_consecutive_failures} failed trials in a row; "
              f"last: {outcome.stopped_by_failures}", file=sys.stderr)
        return 1
    return 0


def cmd_dashboard(args) -> int:
    from search.dashboard import serve

    storage = args.storage or f"sqlite:///{Path(args.studies_dir) / 'hematune.db'}"
    try:
        serve(storage, Path(args.studies_dir), args.port, args.study)
    except KeyboardInterrupt:
        print("hematune: dashboard stopped", file=sys.stderr)
    return 0


COMMANDS = {"search": cmd_search, "worker": cmd_worker, "dashboard": cmd_dashboard,
            **REPORT_COMMANDS, **SERVE_COMMANDS}  # report, export, promote, verify, predict; serve


def main(argv: list[str] | None = None) -> int:
    quiet_backend_logs()
    select_backend()
    interrupts.install_if_default_sigint()
    args = build_parser().parse_args(argv)
    from search.errors import USER_ERRORS
    from search.storage import STORAGE_ERRORS, describe_failure

    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as exc:
        print(f"hematune: error: {exc}", file=sys.stderr)
        return 2
    except STORAGE_ERRORS as exc:  # the database failed mid-run: server gone, disk full, read-only (search/storage.py)
        print(f"hematune: error: {describe_failure(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, file too large, permission denied: the file and the reason, no traceback
        where = exc.filename2 or exc.filename  # a copy names its source first; the write failed at the target
        print(f"hematune: error: {f'{where}: ' if where else ''}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hematune: interrupted: the running trial was recorded as failed; "
              "re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
