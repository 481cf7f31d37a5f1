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
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from data_pipeline.errors import first_line
from data_pipeline.files import write_atomic
from reports import OUT_DIR, evaluate, figures
from reports.errors import ReportError
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

GAP_WARNING_POINTS = 3.0


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


def pct(x: float | None) -> str:
    """Accuracy in percent, one decimal — the format every accuracy in the report uses."""
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def train_seconds(trial: FrozenTrial) -> float | None:
    if trial.user_attrs.get(keys.WALL_SECONDS) is not None:
        return float(trial.user_attrs[keys.WALL_SECONDS])
    return trial.duration.total_seconds() if trial.duration else None


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


def _fmt_params(params: dict) -> str:
    parts = []
    for k, v in params.items():
        parts.append(f"`{k}={v:.4g}`" if isinstance(v, float) else f"`{k}={v}`")
    return ", ".join(parts)


def _latency_text(latency: evaluate.Latency | None, rebuilt: bool = False) -> str:
    if latency is None:
        return "—"
    spread = f"{latency.p25_ms:.1f}–{latency.p75_ms:.1f}"
    return f"{latency.median_ms:.1f} ({spread}){' †' if rebuilt else ''}"


def _counts_line(counts: dict | None) -> str:
    if not counts:
        return "—"
    return ", ".join(f"{k} {v}" for k, v in counts.items()) + f" (total {sum(counts.values())})"


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
    attrs = view.attrs

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

    # ---------------------------------------------------------------- text
    running = states[TrialState.RUNNING]
    lines = [f"# Model selection report: `{view.name}`", ""]
    lines.append(f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')} from `{view.storage_url}`. "
                 + (f"**The study is still running or was interrupted ({running} trial(s) running):** this report "
                    "describes the trials finished so far." if running else "No trial is running."))
    lines += ["", "## Summary", ""]
    lines.append(f"- **Data**: `{root}` ({attrs.get(keys.LAYOUT)} layout), {len(classes)} classes: {', '.join(classes)}; "
                 f"fingerprint `{attrs.get(keys.DATA_FINGERPRINT)}`")
    lines.append(f"- **Images**: train {_counts_line(attrs.get(keys.TRAIN_COUNTS))}; "
                 f"group-validation {_counts_line(attrs.get(keys.VAL_COUNTS))}; "
                 f"TEST {len(test)} files" + (f", {len(best.predictions.skipped)} unusable" if best.predictions and
                                              best.predictions.skipped else ""))
    lines.append(f"- **Split rule**: {attrs.get(keys.SPLIT_RULE)} · seed {attrs.get(keys.SPLIT_SEED)} · "
                 f"validation fraction {attrs.get(keys.VAL_FRACTION)} · split hash `{attrs.get(keys.SPLIT_HASH)}`")
    lines.append(f"- **Search**: model `{attrs.get(keys.MODEL)}`, pruner {attrs.get(keys.PRUNER)}, "
                 f"budget spent {spent_seconds(view.study) / 60:.1f} min of trial time")
    lines.append(f"- **Trials**: {states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
                 f"{states[TrialState.FAIL]} failed, {running} running"
                 + (f", {states[TrialState.WAITING]} queued" if states[TrialState.WAITING] else ""))
    lines.append(f"- **Best trial**: {best_trial.number} ({best.family}), group-validation accuracy "
                 f"{pct(best.val_accuracy)} % at epoch {best_trial.user_attrs.get(keys.BEST_EPOCH, 0) + 1}")
    lines.append(f"- **Best parameters** (searched and fixed): {_fmt_params(family_params(view, best_trial)[1])}")

    lines += ["", "## Comparison", "",
              f"Best trial of every family searched and the top {opts.top_k} overall, ranked by group-validation "
              "accuracy (the only number used to choose). TEST accuracy with a bootstrap 95 % interval "
              f"({evaluate.BOOTSTRAP_SAMPLES} resamples of TEST's source groups — {groups_note} — since copies of "
              "one cell are right or wrong together). Latency: CPU, batch 1, median "
              f"(inter-quartile range) of {opts.latency_reps} calls after warm-up.", "",
              "| trial | family | group-val acc % | TEST acc % [95 % CI] | macro-F1 | params | latency ms | train s |",
              "|---:|---|---:|---|---:|---:|---:|---:|"]
    any_rebuilt = False
    for r in rows:
        if r.predictions is not None:
            test_cell = f"{pct(r.test_accuracy)} [{pct(r.test_ci[0])}, {pct(r.test_ci[1])}]"
            f1_cell = f"{r.macro_f1:.3f}"
        else:
            test_cell, f1_cell = r.why_no_test, "—"
        any_rebuilt |= r.latency_rebuilt
        seconds = train_seconds(r.trial)
        marker = " ★" if r.trial.number == best_trial.number else ""
        lines.append(f"| {r.trial.number}{marker} | {r.family} | {pct(r.val_accuracy)} | {test_cell} | {f1_cell} | "
                     f"{r.trial.user_attrs.get(keys.PARAM_COUNT, 0):,} | {_latency_text(r.latency, r.latency_rebuilt)} | "
                     f"{'—' if seconds is None else f'{seconds:.0f}'} |")
    lines.append("")
    lines.append("★ selected model (best group-validation accuracy)." + (
        " † latency of the architecture rebuilt from the trial's parameters (its model file was not kept; "
        "latency does not depend on the weights)." if any_rebuilt else ""))

    lines += ["", f"## Best model: trial {best_trial.number} ({best.family})", ""]
    if best.predictions is None:
        lines.append(f"Its model file was not kept ({best.why_no_test}); no TEST metrics.")
    else:
        pred = best.predictions
        gap = round((best.val_accuracy - best.test_accuracy) * 100, 1)  # warn on the number the reader sees
        lines += ["### Per-class metrics (TEST)", "", "| class | precision | recall | F1 | images |",
                  "|---|---:|---:|---:|---:|"]
        for c in best_details["per_class"]:
            lines.append(f"| {c['class']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
        lines += ["", "### Confusion matrix (TEST)", "", f"![confusion matrix]({figs['confusion-matrix.png']})", "",
                  "### Calibration (TEST)", "",
                  f"Expected calibration error: **{best_details['ece']:.3f}** ({evaluate.ECE_BINS} equal-width "
                  "confidence bins; 0 = confidence matches accuracy).", "",
                  f"![reliability plot]({figs['reliability.png']})", "",
                  "### Validation → TEST gap", "",
                  f"Group-validation accuracy {pct(best.val_accuracy)} %, TEST accuracy {pct(best.test_accuracy)} %: "
                  f"gap **{gap:+.1f} points**."]
        if gap > GAP_WARNING_POINTS:
            lines.append("")
            lines.append(f"> **Warning:** the gap exceeds {GAP_WARNING_POINTS:.0f} points. The validation score "
                         "overstates what this model does on new source cells — check the grouping rule "
                         f"({attrs.get(keys.SPLIT_RULE)}), and expect the TEST number, not the validation one.")
        lines.append("")
        lines.append(f"Model file `{best.model_file}` (sha256 `{best.model_sha256[:16]}…`); TEST predictions "
                     f"`{pred.path}`.")
        if pred.skipped:
            lines.append(f"{len(pred.skipped)} TEST file(s) could not be read and were not scored: "
                         + "; ".join(f"{k}: {v}" for k, v in list(pred.skipped.items())[:5]))

    lines += ["", "## Search", "", "### Optimization history", "",
              f"![optimization history]({figs['optimization-history.png']})", "", "### Parameter importances", ""]
    if importance_values:
        lines.append(f"![parameter importances]({figs['param-importances.png']})")
        lines.append("")
        lines.append(", ".join(f"{k} {v:.2f}" for k, v in importance_values.items()))
    else:
        lines.append(f"Not available: {importance_note}.")

    lines += ["", "## Accuracy vs latency", "",
              "Pareto front across completed trials: no other trial is both more accurate (group-validation) and "
              "faster (CPU, batch 1). A lab with CPUs only can take the fastest model within the accuracy it can "
              "afford to lose; TEST plays no part in this choice.", ""]
    if points:
        lines += [f"![accuracy vs latency]({figs['pareto.png']})", "",
                  "| trial | family | group-val acc % | latency ms | params |", "|---:|---|---:|---:|---:|"]
        for p in sorted((p for p in points if p["trial"] in front), key=lambda p: p["latency_ms"]):
            lines.append(f"| {p['trial']} | {p['family']} | {pct(p['val_accuracy'])} | {p['latency_ms']:.1f}"
                         f"{' †' if p['rebuilt'] else ''} | {p['param_count'] or 0:,} |")
        lines.append("")
        lines.append(f"Fastest within {opts.within:g} point(s) of the best group-validation accuracy: **trial "
                     f"{quick['trial']}** ({quick['family']}, {pct(quick['val_accuracy'])} %, "
                     f"{quick['latency_ms']:.1f} ms). Choose another margin with `--within POINTS`.")
        if untimed:
            lines.append(f"{untimed} lower-ranked completed trial(s) were not timed (limit {opts.pareto_limit}).")
    else:
        lines.append("No completed trial could be timed.")

    versions = package_versions()
    trial_versions = best_trial.user_attrs.get(keys.VERSIONS) or {}
    lines += ["", "## Reproducibility", "",
              f"- hematune git commit: `{git_commit() or 'unknown'}`",
              f"- data fingerprint `{attrs.get(keys.DATA_FINGERPRINT)}`, split hash `{attrs.get(keys.SPLIT_HASH)}`, "
              f"TEST fingerprint `{best.predictions.test_fingerprint if best.predictions else '—'}`",
              f"- study seed {attrs.get(keys.SEED)}; best trial seed {best_trial.user_attrs.get(keys.SEED)}",
              f"- training: backend {best_trial.user_attrs.get(keys.BACKEND)}, device {best_trial.user_attrs.get(keys.DEVICE)}, "
              + ", ".join(f"{k} {v}" for k, v in trial_versions.items()),
              f"- this report: backend {keras.backend.backend()}, device {device_description()}, "
              + ", ".join(f"{k} {v}" for k, v in versions.items())]

    evaluated = [r for r in rows if r.predictions is not None]
    lines += ["", "## About TEST", "",
              f"TEST ({len(test)} files, {'the data set’s TEST folder' if attrs.get(keys.LAYOUT) == 'train_test' else 'the files the split manifest set aside'}) "
              "was never read by the search: models were selected on group-validation accuracy alone. TEST was "
              f"evaluated only for this report, once per reported model file ({len(evaluated)} model(s): trials "
              f"{', '.join(str(r.trial.number) for r in evaluated) or 'none'}); the predictions are saved beside "
              "the figures and re-used, not recomputed, when the report is generated again. "
              + ("Re-used saved predictions for trial(s) " + ", ".join(str(r.trial.number) for r in evaluated
                                                                     if r.predictions.reused) + "."
                 if any(r.predictions.reused for r in evaluated) else ""), ""]

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
    write_atomic(report_path, "\n".join(lines))
    return Report(report_path, figures_dir, summary)
