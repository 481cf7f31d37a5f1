"""hematune: Optuna search and honest model selection for white-blood-cell image classifiers.

The command line behind the Makefile's targets, and the one leaf of the
project: it wires every command to the package that does the work, and no
module imports it (tests/test_architecture.py checks). Each command is a
parser here plus one call into its package; the packages take plain values,
never this module's argparse namespace.

Every user error (`data_pipeline.errors.HematuneError`: bad data, a setting
that cannot work, a missing release…) ends as one line on stderr and exit
status 2, never a traceback — ``hematune --debug …`` shows the traceback
instead; Ctrl-C ends with 130 after the running trial has been recorded as
failed.

Only argparse and the backend choice are imported at module level, so
``hematune --help`` stays fast: each command imports what it needs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reports import OUT_DIR  # a path constant: the package's __init__ imports nothing heavy
from search import interrupts
from search.environment import quiet_backend_logs, select_backend
from serving.server import MIN_TOKEN, TOKEN_ENV  # stdlib only, like this module

quiet_backend_logs()  # before anything imports TensorFlow
select_backend()  # before anything imports Keras: JAX on a visible GPU, or GPU=0 hides the GPUs


# --- argument types: a bad value is one argparse line naming it ---

def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive(kind):
    """A whole number (``kind`` int) or a number (float) that must be above 0."""
    def parse(text: str):
        value = (whole_number if kind is int else number)(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be positive")
        return value
    return parse


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 65535")
    return value


# --- the options several commands share, defined once ---

def add_study_options(parser: argparse.ArgumentParser, study_help: str = "study name", required: bool = False,
                      storage_help: str = "") -> None:
    """--study, --storage and --studies-dir: which study, in which storage, with its files where."""
    parser.add_argument("--study", required=required, help=study_help)
    parser.add_argument("--storage", help="SQLAlchemy URL (default: sqlite:///<studies-dir>/hematune.db)" + storage_help)
    parser.add_argument("--studies-dir", default="studies", type=Path,
                        help="where the default database, split manifests and trial models live (default: studies)")


def add_budget_options(parser: argparse.ArgumentParser, trials_default: int = 20) -> None:
    parser.add_argument("--trials", type=whole_number, default=trials_default,
                        help=f"finished trials the study should have (default {trials_default})")
    parser.add_argument("--timeout", type=number, help="wall-clock budget of the study's trials, seconds")


# --- the parsers ---

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hematune", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback instead of one line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    search = commands.add_parser("search", help="run (or resume) a hyperparameter search",
                                 description="Run or resume an Optuna study on a folder-per-class image set.")
    search.add_argument("--model", default="cnn", help="family: cnn, efficientnet, mobilenet, resnet, vgg or all")
    search.add_argument("--data", required=True, help="DATA folder: ROOT/TRAIN/<class>/ + ROOT/TEST/<class>/, or ROOT/<class>/")
    add_study_options(search, study_help="study name (default: <model>-<data folder name>)")
    add_budget_options(search)
    search.add_argument("--max-epochs", type=whole_number, help="epoch cap per trial (default: the space file's)")
    search.add_argument("--groups", default="auto", help="grouping rule: auto, filename, filename:<regex>, "
                        "csv:<file>, none (default auto)")
    search.add_argument("--val-fraction", type=number, default=0.2, help="share of TRAIN groups used for validation")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--pruner", default="hyperband", help="hyperband (default), median or none")
    search.add_argument("--weights", help="imagenet (backbone default), none, or a weights file path")
    search.add_argument("--space", help="a search-space YAML file instead of studies/spaces/<model>.yaml")
    search.add_argument("--fix", action="append", default=[], metavar="NAME=VALUE",
                        help="pin a parameter of the space (repeatable), e.g. --fix version=v1")
    search.add_argument("--keep-top", type=whole_number, default=3, help="trials that keep a model file (default 3)")
    search.add_argument("--workers", type=whole_number, default=1,
                        help="local worker processes sharing the study (default 1); see `hematune worker`")
    search.add_argument("--precision", default="auto", help="auto (default: mixed_bfloat16 on GPUs with bfloat16, "
                        "mixed_float16 on older GPUs, float32 on CPU), float32, mixed_bfloat16 or mixed_float16")

    worker = commands.add_parser(
        "worker", help="join an existing study as one more worker (or N local ones with --workers N)",
        description="Run trials of an existing study; its data, model, space and split come from the study.")
    add_study_options(worker, study_help="name of the study to join (required)",
                      storage_help="; postgresql://user:password@host/db for workers on several machines")
    worker.add_argument("--data", help="the study's images at another path on this machine (default: the path the "
                        "study recorded)")
    add_budget_options(worker)
    worker.add_argument("--workers", type=whole_number, default=1, help="local worker processes to start (default 1)")
    worker.add_argument("--precision", help="auto, float32, mixed_bfloat16 or mixed_float16 (default: the study's)")

    select = commands.add_parser(
        "select", help="cross-validate a study's top trials, refit and ensemble the winner (make select)",
        description="Re-train the study's TOP trials on FOLDS group-aware folds of TRAIN (never TEST), choose on the "
                    "CV mean, refit the winner on all of TRAIN, average its fold models (+ flips/turns), and write "
                    "<studies-dir>/<study>/select/stages.json. Resumable: re-run the same command.")
    add_study_options(select, study_help="the searched study (required)", required=True)
    select.add_argument("--top", type=positive(int), default=3, help="finalists: the study's best trials (default 3)")
    select.add_argument("--folds", type=positive(int), default=None,
                        help="group folds K (default: 5, or down to 2 when the top trial's 5 folds and refit would "
                             "not fit in --timeout; a resumed select keeps its folds)")
    select.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    select.add_argument("--timeout", type=positive(float), help="seconds of training for the whole select; a "
                        "finalist that would eat the leader's time is stopped (default: no limit)")
    select.add_argument("--data", help="the study's data folder, if it moved since the search")

    dashboard = commands.add_parser("dashboard", help="browse studies in optuna-dashboard (127.0.0.1 only)",
                                    description="Serve optuna-dashboard on the study storage, bound to 127.0.0.1.")
    add_study_options(dashboard, study_help="print the URL of this study's page")
    dashboard.add_argument("--port", type=whole_number, default=8080, help="port on 127.0.0.1 (default 8080)")

    report = commands.add_parser("report", help="write the Markdown comparison report of a study",
                                 description=f"Compare a study's models: {OUT_DIR}/<study>.md plus figures in "
                                             f"{OUT_DIR}/<study>/. Reads TEST, once per reported model.")
    _add_report_study_options(report)
    report.add_argument("--out", default=OUT_DIR, type=Path, help=f"output folder (default: {OUT_DIR})")
    report.add_argument("--top-k", default=3, type=positive(int), help="top trials to compare besides each family's best")
    report.add_argument("--within", default=1.0, type=number,
                        help="name the fastest model within this many accuracy points of the best (default 1)")
    report.add_argument("--latency-reps", default=20, type=positive(int),
                        help="timed single-image calls per model (default 20)")
    report.add_argument("--stage", help="the `make select` stage whose validation → TEST gap the report states "
                                        "(default: the one select recommends, fixed before TEST is read)")

    export = commands.add_parser("export", help="write a trial's model (.keras) with labels and preprocessing",
                                 description="Copy the best (or a chosen) trial's model to a folder with "
                                             "labels.json and preprocessing.json.")
    _add_report_study_options(export)
    export.add_argument("--trial", default="best", help="best (default) or a trial number")
    export.add_argument("--out", type=Path, help="output folder (default: exports/<study>)")

    promote = commands.add_parser("promote", help="promote a trial to a versioned, verifiable release",
                                  description="Write releases/<name>/v<N>/ atomically: model, labels, "
                                              "preprocessing, metrics, model card, SHA256SUMS.")
    _add_report_study_options(promote)
    promote.add_argument("--trial", help="best (default) or a trial number")
    promote.add_argument("--stage", help="promote a `make select` stage instead of a trial: trial, cv, refit, "
                                         "ensemble or ensemble-tta")
    promote.add_argument("--name", help="release name (default: the study name)")
    promote.add_argument("--champion", action="store_true",
                         help="make this version the champion (the first release always is)")
    promote.add_argument("--releases-dir", default="releases", type=Path, help="(default: releases)")
    promote.add_argument("--reports-dir", default=OUT_DIR, type=Path,
                         help=f"where the report keeps TEST predictions, re-used here (default: {OUT_DIR})")

    verify = commands.add_parser("verify", help="check a release's checksums and load its model in safe mode")
    verify.add_argument("release", help="releases/<name>/v<N>, or releases/<name> for its champion")

    predict = commands.add_parser("predict", help="classify images with a release",
                                  description="Verify the release, then print one row per image: file, class, "
                                              "confidence, top-3. Exit 1 if some file could not be classified.")
    predict.add_argument("--release", required=True, help="releases/<name>/v<N>, or releases/<name> (champion)")
    predict.add_argument("--format", choices=("table", "csv", "json"), default="table")
    predict.add_argument("--batch-size", type=positive(int), default=64)
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")

    evaluate = commands.add_parser(
        "evaluate", help="external validation: score a release on another lab's labelled images (Markdown report)",
        description="Verify a release, score it on class folders from another source (flat: all of them; "
                    "TRAIN/TEST: TEST only), folders matched to its classes by name, and write "
                    f"{OUT_DIR}/external-<release>-<version>-<data>.md with figures and predictions.")
    evaluate.add_argument("--release", required=True, help="releases/<name>/v<N>, or releases/<name> (champion)")
    evaluate.add_argument("--data", required=True, help="other-lab folder: ROOT/<class>/ or ROOT/TRAIN|TEST/<class>/")
    evaluate.add_argument("--groups", default="auto", help="source groups for the interval: auto, filename, "
                          "filename:<regex>, csv:<file>, none (default auto)")
    evaluate.add_argument("--out", default=OUT_DIR, type=Path, help=f"output folder (default: {OUT_DIR})")
    evaluate.add_argument("--batch-size", type=positive(int), default=64)

    serve = commands.add_parser(
        "serve", help="serve a release: browser upload page and JSON prediction API",
        description="Verify a release, then serve it: an upload page at /, POST /predict (multipart files or "
                    "JSON base64), GET /health, GET /model, API docs at /docs. Serving a release name follows "
                    "its champion pointer without a restart.")
    which = serve.add_mutually_exclusive_group()
    which.add_argument("--name", help="release name: serve the champion of <releases-dir>/<name> and follow it")
    which.add_argument("--release", help="releases/<name> (its champion, followed) or releases/<name>/v<N> "
                                         "(that version only)")
    serve.add_argument("--releases-dir", default="releases", type=Path, help="(default: releases)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1); any other than loopback needs a token")
    serve.add_argument("--port", type=port, default=8000, help="(default 8000; 0 picks a free one)")
    serve.add_argument("--token", help=f"bearer token every API call must send (default: ${TOKEN_ENV}); "
                                       f"at least {MIN_TOKEN} characters")
    serve.add_argument("--max-file-mb", type=positive(float), default=20.0, help="upload limit per file (default 20)")
    serve.add_argument("--max-files", type=positive(int), default=64, help="files per request (default 64)")
    serve.add_argument("--max-request-mb", type=positive(float), default=100.0,
                       help="limit of a whole request body (default 100)")
    serve.add_argument("--max-batch", type=positive(int), default=64,
                       help="most images one model call takes from concurrent requests (default 64; "
                            "1 runs every request alone)")

    preview = commands.add_parser(
        "augment-preview", help="real cells at every aug_strength as one PNG grid, to check the augmentation by eye",
        description="Draw one training image of each class at augmentation strengths 0 to 1, each draw exactly "
                    "what a training step would feed the model.")
    preview.add_argument("--data", default="../shared/data/blood-cells", help="DATA folder (TRAIN/<class>/ or <class>/)")
    preview.add_argument("--out", type=Path, default=Path("docs/augmentation.png"), help="PNG to write")
    preview.add_argument("--size", type=positive(int), default=96, help="image side in pixels, as a trial's image_size")
    preview.add_argument("--cells", type=positive(int), default=4, help="how many classes to show one cell of")
    preview.add_argument("--draws", type=positive(int), default=3, help="draws per cell and strength")
    preview.add_argument("--seed", type=int, default=0)
    return parser


def _add_report_study_options(parser: argparse.ArgumentParser) -> None:
    add_study_options(parser, required=True)
    parser.add_argument("--data", help="the study's data folder, if it moved since the search")


# --- the commands: one call into the package that does the work ---

def cmd_search(args) -> int:
    from search.runner import SearchConfig, run_search
    from search.space import parse_fixed
    from search.workers import finish_run, search_with_workers

    fixed = parse_fixed([item for chunk in args.fix for item in chunk.split()])
    config = SearchConfig(
        data=args.data, model=args.model, study=args.study, storage=args.storage, studies_dir=args.studies_dir,
        trials=args.trials, timeout=args.timeout, max_epochs=args.max_epochs, groups=args.groups,
        val_fraction=args.val_fraction, seed=args.seed, pruner=args.pruner, weights=args.weights,
        space_file=args.space, fixed=fixed, keep_top=args.keep_top, precision=args.precision,
    )
    if args.workers != 1:  # N local processes on one study (search/workers.py)
        return search_with_workers(config, args.workers)
    return finish_run(config, run_search(config))


def cmd_worker(args) -> int:
    from search.storage import default_storage
    from search.workers import run_worker

    return run_worker(args.study, args.storage or default_storage(args.studies_dir), args.studies_dir, args.data,
                      args.trials, args.timeout, args.workers, args.precision)


def cmd_select(args) -> int:
    from search.select import run_select
    from search.storage import default_storage

    run_select(args.study, args.storage or default_storage(args.studies_dir), args.studies_dir, top=args.top,
               folds=args.folds, seed=args.seed, timeout=args.timeout, data=args.data)
    return 0


def cmd_dashboard(args) -> int:
    from search.dashboard import serve
    from search.storage import default_storage

    try:
        serve(args.storage or default_storage(args.studies_dir), Path(args.studies_dir), args.port, args.study)
    except KeyboardInterrupt:
        print("hematune: dashboard stopped", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from reports.report import ReportOptions, build_report

    result = build_report(ReportOptions(study=args.study, storage=args.storage, studies_dir=args.studies_dir,
                                        out_dir=args.out, data=args.data, top_k=args.top_k, within=args.within,
                                        latency_reps=args.latency_reps, stage=args.stage))
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
                   args.reports_dir, make_champion=args.champion, data=args.data, stage=args.stage)
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
          f"{'stage ' + str(metrics['stage']) + ', ' if metrics.get('stage') else ''}trial {metrics.get('trial')}, TEST accuracy {test.get('accuracy', float('nan')):.4f})")
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


def cmd_evaluate(args) -> int:
    from reports.external import evaluate_release

    done = evaluate_release(args.release, args.data, args.groups, args.out, args.batch_size)
    s = done.summary
    low, high = s["accuracy_ci95"]
    print(f"external validation: {s['images']} images of {len(s['classes_present'])} classes, accuracy "
          f"{100 * s['accuracy']:.1f} % [95 % CI {100 * low:.1f}, {100 * high:.1f}], macro-F1 "
          f"{s['macro_f1_over_classes_present']:.3f}, ECE {s['ece']:.3f}; report: {done.path}")
    return 0


def cmd_serve(args) -> int:
    from serving.server import release_target, serve

    serve(release_target(args.release, args.name, args.releases_dir), args.host, args.port, args.token,
          args.max_file_mb, args.max_files, args.max_request_mb, args.max_batch)
    return 0


def cmd_augment_preview(args) -> int:
    from data_pipeline.preview import write_preview

    print(write_preview(args.data, args.out, args.size, args.cells, args.draws, args.seed))
    return 0


COMMANDS = {"search": cmd_search, "worker": cmd_worker, "select": cmd_select, "dashboard": cmd_dashboard, "report": cmd_report,
            "export": cmd_export, "promote": cmd_promote, "verify": cmd_verify, "predict": cmd_predict, "evaluate": cmd_evaluate,
            "serve": cmd_serve, "augment-preview": cmd_augment_preview}


def main(argv: list[str] | None = None) -> int:
    quiet_backend_logs()
    select_backend()
    interrupts.install_if_default_sigint()
    args = build_parser().parse_args(argv)
    from data_pipeline.errors import HematuneError
    from search.storage import STORAGE_ERRORS, describe_failure

    try:
        return COMMANDS[args.command](args)
    except HematuneError as exc:
        if args.debug:
            raise
        print(f"hematune: error: {exc}", file=sys.stderr)
        return 2
    except STORAGE_ERRORS as exc:  # the database failed mid-run: server gone, disk full, read-only (search/storage.py)
        if args.debug:
            raise
        print(f"hematune: error: {describe_failure(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, file too large, permission denied: the file and the reason, no traceback
        if args.debug:
            raise
        where = exc.filename2 or exc.filename  # a copy names its source first; the write failed at the target
        print(f"hematune: error: {f'{where}: ' if where else ''}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hematune: interrupted: the running trial was recorded as failed; "
              "re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
