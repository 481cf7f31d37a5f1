"""The ``report``, ``export``, ``promote``, ``verify`` and ``predict`` subcommands.

Kept here rather than in `search.cli` so that file stays about the search;
`search.cli` adds these parsers and dispatches to these functions. Nothing
heavy (Keras, Optuna) is imported until a command runs, so ``--help`` is quick.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _study_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="study name")
    parser.add_argument("--storage", help="SQLAlchemy URL (default: sqlite:///<studies-dir>/hematune.db)")
    parser.add_argument("--studies-dir", default="studies", type=Path,
                        help="where the default database and trial models live (default: studies)")
    parser.add_argument("--data", help="the study's data folder, if it moved since the search")


def _int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def add_parsers(commands) -> None:
    """Register the subcommands on ``hematune``'s subparsers object."""
    report = commands.add_parser("report", help="write the Markdown comparison report of a study",
                                 description="Compare a study's models: reports/<study>.md plus figures in "
                                             "reports/<study>/. Reads TEST, once per reported model.")
    _study_args(report)
    report.add_argument("--out", default="reports", type=Path, help="output folder (default: reports)")
    report.add_argument("--top-k", default=3, type=_int, help="top trials to compare besides each family's best")
    report.add_argument("--within", default=1.0, type=_float,
                        help="name the fastest model within this many accuracy points of the best (default 1)")
    report.add_argument("--latency-reps", default=20, type=_int, help="timed single-image calls per model (default 20)")

    export = commands.add_parser("export", help="write a trial's model (.keras) with labels and preprocessing",
                                 description="Copy the best (or a chosen) trial's model to a folder with "
                                             "labels.json and preprocessing.json.")
    _study_args(export)
    export.add_argument("--trial", default="best", help="best (default) or a trial number")
    export.add_argument("--out", type=Path, help="output folder (default: exports/<study>)")

    promote = commands.add_parser("promote", help="promote a trial to a versioned, verifiable release",
                                  description="Write releases/<name>/v<N>/ atomically: model, labels, "
                                              "preprocessing, metrics, model card, SHA256SUMS.")
    _study_args(promote)
    promote.add_argument("--trial", default="best", help="best (default) or a trial number")
    promote.add_argument("--name", help="release name (default: the study name)")
    promote.add_argument("--champion", action="store_true",
                         help="make this version the champion (the first release always is)")
    promote.add_argument("--releases-dir", default="releases", type=Path, help="(default: releases)")
    promote.add_argument("--reports-dir", default="reports", type=Path,
                         help="where the report keeps TEST predictions, re-used here (default: reports)")

    verify = commands.add_parser("verify", help="check a release's checksums and load its model in safe mode")
    verify.add_argument("release", help="releases/<name>/v<N>, or releases/<name> for its champion")

    predict = commands.add_parser("predict", help="classify images with a release",
                                  description="Verify the release, then print one row per image: file, class, "
                                              "confidence, top-3. Exit 1 if some file could not be classified.")
    predict.add_argument("--release", required=True, help="releases/<name>/v<N>, or releases/<name> (champion)")
    predict.add_argument("--format", choices=("table", "csv", "json"), default="table")
    predict.add_argument("--batch-size", type=_int, default=64)
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")


def cmd_report(args) -> int:
    from reports.report import ReportOptions, build_report

    result = build_report(ReportOptions(study=args.study, storage=args.storage, studies_dir=args.studies_dir,
                                        out_dir=args.out, data=args.data, top_k=args.top_k, within=args.within,
                                        latency_reps=args.latency_reps))
    print(f"report: {result.path} (figures and TEST predictions in {result.figures_dir}/)")
    return 0


def cmd_export(args) -> int:
    from reports.release import export
    from reports.study import load

    out = export(load(args.study, args.storage, args.studies_dir), args.trial, args.out)
    print(f"exported: {out}/model.keras (+ labels.json, preprocessing.json); "
          f"load with keras.saving.load_model('{out}/model.keras')")
    return 0


def cmd_promote(args) -> int:
    from reports.release import promote
    from reports.study import load

    done = promote(load(args.study, args.storage, args.studies_dir), args.trial, args.name, args.releases_dir,
                   args.reports_dir, make_champion=args.champion, data=args.data)
    note = "champion" if done.champion == done.version else f"champion stays {done.champion}; --champion moves it"
    print(f"promoted: {done.path} ({note}); check it with: hematune verify {done.path}")
    return 0


def cmd_verify(args) -> int:
    from reports.release import verify

    release = verify(args.release)
    metrics = release.metrics
    test = metrics.get("test", {})
    print(f"verified: {release.path} — all checksums match, model loads in safe mode "
          f"({len(release.labels)} classes, {release.preprocessing.get('image_size')} px; study {metrics.get('study')} "
          f"trial {metrics.get('trial')}, TEST accuracy {test.get('accuracy', float('nan')):.4f})")
    return 0


def cmd_predict(args) -> int:
    from reports.predict import predict, render

    rows = predict(args.release, args.inputs, batch_size=args.batch_size)
    print(render(rows, args.format))
    failed = sum(1 for r in rows if r.error)
    if failed:
        print(f"hematune: {failed} of {len(rows)} file(s) could not be classified (see their rows)", file=sys.stderr)
        return 1
    return 0


COMMANDS = {"report": cmd_report, "export": cmd_export, "promote": cmd_promote, "verify": cmd_verify,
            "predict": cmd_predict}
