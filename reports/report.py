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
        groups_note=groups_note, spent_seconds=spent_seconds(view.study),
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
        "importances": importance_values, "figures": figs,
        "bootstrap": {"samples": evaluate.BOOTSTRAP_SAMPLES, "seed": evaluate.BOOTSTRAP_SEED, "groups": groups_note},
    }
    report_path = out_dir / f"{view.name}.md"
    write_atomic(figures_dir / "summary.json", json.dumps(summary, indent=1, default=str))
    write_atomic(report_path, render(facts))
    return Report(report_path, figures_dir, summary)
