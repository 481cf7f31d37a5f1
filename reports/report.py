"""The comparison report of a study: ``reports/out/<study>.md`` with figures in ``reports/out/<study>/``.

What it is for: letting a person *prove* which model to ship. Models are
ranked on group-validation accuracy only (what the search optimised); TEST is
read here, once per reported model file, to state how well that choice
generalises — never to choose. The report works on a study that is still
running or was interrupted: it describes the trials that exist now.

Reported models are the best trial of every family searched plus the top-k
overall. Only the top trials keep a model file; other families still appear
with their validation numbers ("no model kept"). Latency is measured for
every completed trial — on the saved model when there is one, otherwise on
the architecture rebuilt from the trial's parameters (latency does not depend
on the weights) — so the accuracy/latency Pareto front covers the whole study.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import keras
import optuna
from optuna.trial import FrozenTrial, TrialState

from data_pipeline.errors import first_line
from data_pipeline.files import write_atomic
from reports import OUT_DIR, evaluate, figures
from reports.errors import ReportError
from reports.report_markdown import ReportFacts, render, train_seconds
from reports.study import (
    StudyView,
    check_data_unchanged,
    data_root,
    family_params,
    load,
    sha256_file,
    test_groups,
    test_images,
)
from search import keys
from search import metrics as scoring  # the dashboard's scoring too


@dataclass
class ReportOptions:
    study: str
    storage: str | None = None
    studies_dir: Path = Path("studies")
    out_dir: Path = OUT_DIR
    data: str | None = None  # the data folder, when it moved since the search
    top_k: int = 3
    within: float = 1.0  # accuracy points: "fastest model within this of the best"
    latency_reps: int = 20
    pareto_limit: int = 60  # completed trials timed for the Pareto front, best first
    stage: str | None = None  # the selection stage whose val→TEST gap is stated (default: the recommended one)


@dataclass
class ModelRow:
    """One reported trial: validation numbers always, TEST numbers when its model file exists."""

    trial: FrozenTrial
    family: str
    model_file: Path | None = None
    model_sha256: str | None = None
    predictions: evaluate.Predictions | None = None
    test_accuracy: float | None = None
    test_ci: tuple[float, float] | None = None
    macro_f1: float | None = None
    latency: evaluate.Latency | None = None
    latency_rebuilt: bool = False
    why_no_test: str = ""

    @property
    def val_accuracy(self) -> float:
        return float(self.trial.value)


@dataclass
class StageRow:
    """One selection stage (`search.stages.Stage`) with its TEST numbers, when its model file is there."""

    stage: object  # search.stages.Stage
    model_sha256: str | None = None
    predictions: evaluate.Predictions | None = None
    test_accuracy: float | None = None
    test_ci: tuple[float, float] | None = None
    macro_f1: float | None = None
    ece: float | None = None
    latency: evaluate.Latency | None = None
    param_count: int | None = None
    why_no_test: str = ""

    @property
    def name(self) -> str:
        return self.stage.name


@dataclass
class StageFacts:
    """The section "From trial to model": what `hematune select` made of the study, scored on TEST."""

    rows: list[StageRow]
    summary: dict  # stages.json's summary: folds, finalists, winner, recommended, …
    chosen: str  # the stage whose val→TEST gap is stated
    chosen_by: str  # why that one: recommended a priori, or named by hand
    stages_file: Path


@dataclass
class Report:
    path: Path
    figures_dir: Path
    summary: dict = field(default_factory=dict)


def _family(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get(keys.FAMILY) or trial.params.get("family") or "?")


def reported_trials(view: StudyView, top_k: int) -> list[FrozenTrial]:
    """Best trial of each family plus the top-k overall, best first."""
    completed = view.completed()
    chosen: dict[int, FrozenTrial] = {t.number: t for t in completed[:top_k]}
    families = {_family(t) for t in chosen.values()}
    for trial in completed:  # best first, so the first trial met of a family is its best
        if _family(trial) not in families:
            chosen[trial.number] = trial
            families.add(_family(trial))
    return sorted(chosen.values(), key=lambda t: (-t.value, t.number))


def _free(model) -> None:
    del model
    keras.backend.clear_session()


def _rebuilt_latency(view: StudyView, trial: FrozenTrial, reps: int) -> evaluate.Latency | None:
    """Latency of the trial's architecture, rebuilt with random weights (no download)."""
    from models.registry import build_model

    family, params = family_params(view, trial)
    try:
        built = build_model(family, params, num_classes=len(view.classes), image_size=int(params["image_size"]),
                            weights="none", seed=0)
        latency = evaluate.measure_latency(built.model, repetitions=reps)
    except Exception:  # noqa: BLE001 - a trial whose parameters no longer build is left off the front
        return None
    finally:
        keras.backend.clear_session()
    return latency


def evaluate_rows(view: StudyView, rows: list[ModelRow], test, groups: list[str], root: Path, figures_dir: Path,
                  reps: int) -> None:
    for row in rows:
        row.model_file = view.model_file(row.trial)
        if row.model_file is None:
            row.why_no_test = "no model kept"
            continue
        model = evaluate.load_model(row.model_file)
        row.model_sha256 = sha256_file(row.model_file)
        pred = evaluate.test_predictions(row.model_file, row.model_sha256, row.trial.number, test, root, view.classes,
                                         figures_dir, model=model, groups=groups)
        row.predictions = pred
        row.test_accuracy = scoring.accuracy(pred.y_true, pred.y_pred)
        row.test_ci = evaluate.bootstrap_ci(pred.correct, pred.groups)
        row.macro_f1 = evaluate.macro_f1(pred.y_true, pred.y_pred, len(view.classes))
        row.latency = evaluate.measure_latency(model, repetitions=reps)
        _free(model)


def chosen_stage(summary: dict, stage: str | None) -> tuple[str, str]:
    """(stage, why): the one named by hand (STAGE=), else the one `make select` recommends — fixed before TEST."""
    from search.stages import RECOMMENDED, STAGES

    if stage is None:
        return str(summary.get("recommended") or RECOMMENDED), "recommended by `make select`, fixed before TEST was read"
    if stage not in STAGES:
        raise ReportError(f"STAGE={stage}: unknown stage; choose one of {', '.join(STAGES)}")
    return stage, f"STAGE={stage} (named by hand)"


def _stage_predictions(row: StageRow, model, trial_rows: list[ModelRow], test, root: Path, classes: list[str],
                       figures_dir: Path, groups: list[str]) -> evaluate.Predictions:
    """TEST predictions of a stage's model file, saved under its SHA-256. A trial row that already scored the
    same file (the "trial" and "cv" stages are trial model files) gives its predictions: TEST is not read again."""
    path = evaluate.model_predictions_path(figures_dir, row.model_sha256)
    same = next((r.predictions for r in trial_rows if r.model_sha256 == row.model_sha256 and r.predictions), None)
    if same is not None and not path.is_file():
        copy = evaluate.Predictions(same.files, same.y_true, same.probs, same.classes, row.stage.source_trial,
                                    same.model_sha256, same.test_fingerprint, same.skipped, same.groups, reused=True)
        evaluate.save_predictions(copy, path)
        return copy
    return evaluate.test_predictions(row.stage.model_path, row.model_sha256, row.stage.source_trial, test, root,
                                     classes, figures_dir, model=model, groups=groups, path=path)


def evaluate_stages(view: StudyView, opts: ReportOptions, trial_rows: list[ModelRow], test, groups: list[str],
                    root: Path, figures_dir: Path) -> StageFacts | None:
    """The selection stages of the study scored on TEST (once per model file), or None when `make select`
    has not run on it."""
    from search.stages import load_stages, stages_path

    stages_file = stages_path(opts.studies_dir, view.name)
    if not stages_file.is_file() and opts.stage is None:
        return None  # the report says `make select` adds the section
    stages, summary = load_stages(opts.studies_dir, view.name)
    chosen, chosen_by = chosen_stage(summary, opts.stage)
    rows, done = [], {}
    for stage in stages:
        row = StageRow(stage)
        rows.append(row)
        if not Path(stage.model_path).is_file():
            row.why_no_test = "model file missing"
            continue
        row.model_sha256 = sha256_file(stage.model_path)
        if row.model_sha256 in done:  # two stages, one file (the CV winner is the best trial): score it once
            first = done[row.model_sha256]
            for name in ("predictions", "test_accuracy", "test_ci", "macro_f1", "ece", "latency", "param_count"):
                setattr(row, name, getattr(first, name))
            continue
        model = evaluate.load_model(stage.model_path)
        pred = _stage_predictions(row, model, trial_rows, test, root, view.classes, figures_dir, groups)
        row.predictions = pred
        row.test_accuracy = scoring.accuracy(pred.y_true, pred.y_pred)
        row.test_ci = evaluate.bootstrap_ci(pred.correct, pred.groups)
        row.macro_f1 = evaluate.macro_f1(pred.y_true, pred.y_pred, len(view.classes))
        row.ece = evaluate.calibration(pred.y_true, pred.probs).ece
        row.latency = evaluate.measure_latency(model, repetitions=opts.latency_reps)
        row.param_count = int(model.count_params())
        done[row.model_sha256] = row
        _free(model)
    if chosen not in {r.name for r in rows}:
        raise ReportError(f"STAGE={chosen}: {stages_file} has no such stage; stages there: "
                          f"{', '.join(r.name for r in rows)}")
    return StageFacts(rows, summary, chosen, chosen_by, stages_file)


def _stage_summary(facts: StageFacts | None) -> dict | None:
    if facts is None:
        return None
    return {"stages_file": str(facts.stages_file), "chosen": facts.chosen, "chosen_by": facts.chosen_by,
            "select": facts.summary,
            "rows": [{"stage": r.name, "model_file": str(r.stage.model_path), "model_sha256": r.model_sha256,
                      "source_trial": r.stage.source_trial, "members": r.stage.members, "epochs": r.stage.epochs,
                      "val_score": r.stage.val_score, "val_sd": r.stage.val_sd, "val_kind": r.stage.val_kind,
                      "test_accuracy": r.test_accuracy, "test_ci": r.test_ci, "macro_f1": r.macro_f1, "ece": r.ece,
                      "latency_ms": r.latency.median_ms if r.latency else None, "param_count": r.param_count,
                      "predictions": str(r.predictions.path) if r.predictions else None} for r in facts.rows]}


def pareto_points(view: StudyView, rows: list[ModelRow], reps: int, limit: int) -> tuple[list[dict], int]:
    """(points, trials left untimed): latency and val accuracy of completed trials."""
    by_number = {r.trial.number: r for r in rows}
    points = []
    completed = view.completed()
    for trial in completed[:limit]:
        row = by_number.get(trial.number)
        rebuilt = False
        if row is not None and row.latency is not None:
            latency = row.latency
        elif view.model_file(trial) is not None:
            model = evaluate.load_model(view.model_file(trial))
            latency = evaluate.measure_latency(model, repetitions=reps)
            _free(model)
        else:
            latency, rebuilt = _rebuilt_latency(view, trial, reps), True
        if latency is None:
            continue
        if row is not None and row.latency is None:
            row.latency, row.latency_rebuilt = latency, rebuilt
        points.append({"trial": trial.number, "family": _family(trial), "val_accuracy": float(trial.value),
                       "latency_ms": latency.median_ms, "latency_p25_ms": latency.p25_ms,
                       "latency_p75_ms": latency.p75_ms, "param_count": trial.user_attrs.get(keys.PARAM_COUNT),
                       "rebuilt": rebuilt})
    return points, max(0, len(completed) - limit)


def pareto_front(points: list[dict]) -> list[int]:
    """Trials no other trial beats on both accuracy (higher) and latency (lower)."""
    front, best = [], -1.0
    for p in sorted(points, key=lambda p: (p["latency_ms"], -p["val_accuracy"])):
        if p["val_accuracy"] > best:
            front.append(p["trial"])
            best = p["val_accuracy"]
    return front


def fastest_within(points: list[dict], points_below_best: float) -> dict | None:
    if not points:
        return None
    best = max(p["val_accuracy"] for p in points)
    ok = [p for p in points if p["val_accuracy"] >= best - points_below_best / 100 - 1e-12]
    return min(ok, key=lambda p: p["latency_ms"])


def _importances(study: optuna.Study, completed: list[FrozenTrial]) -> tuple[dict[str, float], str]:
    if len({t.value for t in completed}) < 2:
        return {}, "every completed trial has the same validation accuracy, so no parameter explains any of it"
    try:
        values = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as exc:
        return {}, first_line(exc)
    if not values:
        return {}, "no parameter varied across the completed trials"
    return dict(values), ""


def build_report(opts: ReportOptions) -> Report:
    from search.environment import device_description, git_commit, package_versions
    from search.runner import spent_seconds

    view = load(opts.study, opts.storage, opts.studies_dir)
    completed = view.completed()
    if not completed:
        raise ReportError(f"STUDY={view.name}: no completed trial yet; a report needs at least one")
    root = data_root(view, opts.data)
    check_data_unchanged(view, root)
    out_dir = Path(opts.out_dir)
    figures_dir = out_dir / view.name
    figures_dir.mkdir(parents=True, exist_ok=True)
    classes = view.classes

    test = test_images(view, root)  # listing TEST; pixels are read by evaluate_rows, once per model file
    rows = [ModelRow(t, _family(t)) for t in reported_trials(view, opts.top_k)]
    groups, groups_note = test_groups(view, test, root)
    evaluate_rows(view, rows, test, groups, root, figures_dir, opts.latency_reps)
    stages = evaluate_stages(view, opts, rows, test, groups, root, figures_dir)
    points, untimed = pareto_points(view, rows, opts.latency_reps, opts.pareto_limit)
    front = pareto_front(points)
    quick = fastest_within(points, opts.within)

    best_trial = completed[0]
    best = next(r for r in rows if r.trial.number == best_trial.number)
    states = {s: len(view.trials(s)) for s in TrialState}
    figs: dict[str, str] = {}

    def fig_name(name: str) -> str:
        figs[name] = f"{view.name}/{name}"
        return figs[name]

    pruned = [(t.number, float(t.intermediate_values[max(t.intermediate_values)]))
              for t in view.trials(TrialState.PRUNED) if t.intermediate_values]
    figures.optimization_history([t.number for t in completed], [float(t.value) for t in completed],
                                 [_family(t) for t in completed], figures_dir / "optimization-history.png", pruned)
    fig_name("optimization-history.png")
    importance_values, importance_note = _importances(view.study, completed)
    if importance_values:
        figures.importances(importance_values, figures_dir / "param-importances.png")
        fig_name("param-importances.png")
    if points:
        figures.pareto(points, front, figures_dir / "pareto.png")
        fig_name("pareto.png")

    best_details = None
    if best.predictions is not None:
        pred = best.predictions
        matrix = scoring.confusion(pred.y_true, pred.y_pred, len(classes))
        calib = evaluate.calibration(pred.y_true, pred.probs)
        scoring.confusion_png(matrix, classes, figures_dir / "confusion-matrix.png",
                              f"TEST confusion matrix, trial {best.trial.number}")
        fig_name("confusion-matrix.png")
        figures.reliability(calib.bins, calib.ece, figures_dir / "reliability.png",
                            f"TEST reliability, trial {best.trial.number}")
        fig_name("reliability.png")
        best_details = {"per_class": scoring.per_class(pred.y_true, pred.y_pred, classes),
                        "confusion": matrix.tolist(), "ece": calib.ece, "calibration_bins": calib.bins}

    facts = ReportFacts(
        view=view, opts=opts, root=root, test_files=len(test), rows=rows, best_trial=best_trial, best=best,
        states=states, figs=figs, best_details=best_details, importance_values=importance_values,
        importance_note=importance_note, points=points, front=front, quick=quick, untimed=untimed,
        groups_note=groups_note, stages=stages, spent_seconds=spent_seconds(view.study),
        best_params=family_params(view, best_trial)[1], trained_with=best_trial.user_attrs.get(keys.VERSIONS) or {},
        git_commit=git_commit(), backend=keras.backend.backend(), device=device_description(),
        versions=package_versions())

    summary = {
        "study": view.name, "best_trial": best_trial.number, "states": {s.name: n for s, n in states.items()},
        "rows": [{"trial": r.trial.number, "family": r.family, "val_accuracy": r.val_accuracy,
                  "test_accuracy": r.test_accuracy, "test_ci": r.test_ci, "macro_f1": r.macro_f1,
                  "param_count": r.trial.user_attrs.get(keys.PARAM_COUNT), "train_seconds": train_seconds(r.trial),
                  "latency_ms": r.latency.median_ms if r.latency else None,
                  "predictions": str(r.predictions.path) if r.predictions else None,
                  "model_sha256": r.model_sha256} for r in rows],
        "best": best_details, "pareto": {"points": points, "front": front, "fastest_within": quick},
        "stages": _stage_summary(stages), "importances": importance_values, "figures": figs,
        "bootstrap": {"samples": evaluate.BOOTSTRAP_SAMPLES, "seed": evaluate.BOOTSTRAP_SEED, "groups": groups_note},
    }
    report_path = out_dir / f"{view.name}.md"
    write_atomic(figures_dir / "summary.json", json.dumps(summary, indent=1, default=str))
    write_atomic(report_path, render(facts))
    return Report(report_path, figures_dir, summary)
