"""The comparison report's text: Markdown from the facts `reports.report` collected.

`reports.report` does the work — reads the study, scores the reported models
on TEST once, times them, draws the figures — and hands this module a
`ReportFacts`; everything here is formatting, so the wording of the report can
change without touching how its numbers are made, and the numbers are the
same in the Markdown and in ``summary.json``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from reports import evaluate
from reports.study import StudyView
from search import keys

GAP_WARNING_POINTS = 3.0  # val → TEST gap, in accuracy points, above which the report warns


def pct(x: float | None) -> str:
    """Accuracy in percent, one decimal — the format every accuracy in the report uses."""
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def train_seconds(trial: FrozenTrial) -> float | None:
    if trial.user_attrs.get(keys.WALL_SECONDS) is not None:
        return float(trial.user_attrs[keys.WALL_SECONDS])
    return trial.duration.total_seconds() if trial.duration else None


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


@dataclass
class ReportFacts:
    """Everything the report states, collected once by `reports.report.build_report`."""

    view: StudyView
    opts: object  # reports.report.ReportOptions: top_k, within, latency_reps, pareto_limit
    root: Path  # the data folder
    test_files: int
    rows: list  # reports.report.ModelRow, ranked
    best_trial: FrozenTrial
    best: object  # the ModelRow of best_trial
    states: dict  # TrialState → count
    figs: dict  # figure file name → path relative to the report
    best_details: dict | None  # per-class metrics, confusion, calibration of the best model on TEST
    importance_values: dict
    importance_note: str
    points: list  # accuracy/latency points of the completed trials
    front: list  # trial numbers on the Pareto front
    quick: dict | None  # the fastest trial within opts.within points of the best
    untimed: int
    groups_note: str  # what the bootstrap resampled
    stages: object  # reports.report.StageFacts of `make select`'s stages, or None when it has not run
    spent_seconds: float  # trial time the study spent
    best_params: dict  # the best trial's parameters, searched and fixed
    trained_with: dict  # package versions the best trial trained with
    git_commit: str | None
    backend: str  # this report's Keras backend, device and package versions
    device: str
    versions: dict


STAGE_TITLES = {"trial": "best trial as searched", "cv": "CV-chosen", "refit": "refit on all of TRAIN",
                "ensemble": "mean of the fold models", "ensemble-tta": "ensemble + 8-view TTA"}


def _val_text(stage) -> str:
    if stage.val_score is None:
        return "—"
    return pct(stage.val_score) + (f" ± {100 * stage.val_sd:.1f}" if stage.val_sd is not None else "")


def _trained_on(stage, folds) -> str:
    if stage.name == "trial":
        return "TRAIN less its group-validation split"
    if stage.name == "cv":
        return f"the trial's own model; its configuration scored on {folds} folds"
    if stage.members > 1:
        return f"{stage.members} models, each on TRAIN less one of {folds} folds"
    return "all of TRAIN (every fold)"


def stages_section(f: ReportFacts) -> list[str]:
    """ "From trial to model": one row per stage of `make select`, TEST beside the validation-side score."""
    name = f.view.name
    lines = ["", "## From trial to model", ""]
    facts = f.stages
    if facts is None:
        return lines + [f"No selection results for this study yet: `make select STUDY={name}` cross-validates the top "
                        "trials, refits the winner on all of TRAIN, ensembles its fold models and adds this section."]
    s = facts.summary
    folds = s.get("folds", "K")
    lines.append(
        f"`make select` re-trained the top {len(s.get('finalists') or [])} configuration(s) of the search on {folds} "
        f"group-aware folds of TRAIN ({s.get('split_rule', 'the study’s grouping rule')}; every source cell validated "
        f"once) and chose trial {s.get('winner_trial', '?')}'s configuration on the cross-validated mean; TEST played no part. "
        "Validation-side score: what each stage is chosen or claimed on (CV mean ± sd over folds where it has one). "
        f"TEST accuracy with the group-bootstrap 95 % interval ({f.groups_note}); ECE over {evaluate.ECE_BINS} "
        f"confidence bins; latency CPU, batch 1, median (inter-quartile range) of {f.opts.latency_reps} calls.")
    lines += ["", "| stage | validation-side acc % | what it is | TEST acc % [95 % CI] | macro-F1 | ECE | latency ms "
              "| params × members |", "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in facts.rows:
        st = r.stage
        if r.predictions is not None:
            test_cell = f"{pct(r.test_accuracy)} [{pct(r.test_ci[0])}, {pct(r.test_ci[1])}]"
            f1_cell, ece_cell = f"{r.macro_f1:.3f}", f"{r.ece:.3f}"
        else:
            test_cell, f1_cell, ece_cell = r.why_no_test, "—", "—"
        marker = " ★" if r.name == facts.chosen else ""
        size = "—" if r.param_count is None else f"{r.param_count:,}"
        lines.append(f"| {r.name}{marker} ({STAGE_TITLES.get(r.name, r.name)}) | {_val_text(st)} | {st.val_kind} | "
                     f"{test_cell} | {f1_cell} | {ece_cell} | {_latency_text(r.latency)} | {size} × {st.members} |")
    lines += ["", f"★ the chosen stage: {facts.chosen_by}. Params: the whole saved model (an ensemble counts all its "
              "members).", "", "Provenance:", "", "| stage | model file | sha256 | source trial | epochs | trained on |",
              "|---|---|---|---:|---:|---|"]
    for r in facts.rows:
        st = r.stage
        sha = f"`{r.model_sha256[:12]}…`" if r.model_sha256 else "—"
        lines.append(f"| {r.name} | `{st.model_path}` | {sha} | {st.source_trial} | {st.epochs} | "
                     f"{_trained_on(st, folds)} |")
    chosen = next(r for r in facts.rows if r.name == facts.chosen)
    lines += ["", f"### Validation → TEST gap of the chosen stage ({facts.chosen})", ""]
    if chosen.predictions is None or chosen.stage.val_score is None:
        lines.append(f"Not available: {chosen.why_no_test or 'no validation-side score recorded'}.")
    else:
        gap = round((chosen.stage.val_score - chosen.test_accuracy) * 100, 1)
        lines.append(f"{facts.chosen} ({facts.chosen_by}): validation-side {_val_text(chosen.stage)} % "
                     f"({chosen.stage.val_kind}), TEST {pct(chosen.test_accuracy)} % "
                     f"[{pct(chosen.test_ci[0])}, {pct(chosen.test_ci[1])}]: gap **{gap:+.1f} points**.")
        if abs(gap) > GAP_WARNING_POINTS:
            lines += ["", f"> **Warning:** the gap is beyond ±{GAP_WARNING_POINTS:.0f} points: the validation-side "
                      "score does not predict this model's TEST accuracy well; trust the TEST number."]
    lines += ["", "### Cross-validated finalists", "",
              "| trial | search group-val % | CV mean % ± sd | fold scores % | epochs | pruned |",
              "|---:|---:|---:|---|---:|---|"]
    for fin in s.get("finalists") or []:
        scores = ", ".join(pct(x) for x in fin.get("fold_scores") or [])
        sd = fin.get("cv_sd")
        mean = pct(fin.get("cv_mean")) + (f" ± {100 * sd:.1f}" if sd is not None else "")
        marker = " ★" if fin.get("trial") == s.get("winner_trial") else ""
        pruned = ("yes" + (f": {fin['pruned_reason']}" if fin.get("pruned_reason") else "")) if fin.get("pruned") else "no"
        lines.append(f"| {fin.get('trial')}{marker} | {pct(fin.get('search_value'))} | {mean} | {scores or '—'} | "
                     f"{fin.get('epochs', '—')} | {pruned} |")
    wall = s.get("wall_seconds")
    lines += ["", f"★ the winner (best CV mean). Select study `{s.get('select_study', '—')}` in the same storage, "
              f"{folds} folds over {s.get('train_images', '—')} TRAIN images (fold assignment hash "
              f"`{s.get('fold_hash', '—')}`, seed {s.get('fold_seed', '—')}), "
              + (f"{wall / 60:.1f} min of wall time" if isinstance(wall, (int, float)) else "wall time not recorded")
              + f". Stages file `{facts.stages_file}`."]
    return lines


def render(f: ReportFacts) -> str:
    """The report as Markdown."""
    view, opts, root, rows, best_trial, best = f.view, f.opts, f.root, f.rows, f.best_trial, f.best
    states, figs, best_details, attrs, classes = f.states, f.figs, f.best_details, f.view.attrs, f.view.classes
    importance_values, importance_note, groups_note = f.importance_values, f.importance_note, f.groups_note
    points, front, quick, untimed = f.points, f.front, f.quick, f.untimed
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
                 f"TEST {f.test_files} files" + (f", {len(best.predictions.skipped)} unusable" if best.predictions and
                                              best.predictions.skipped else ""))
    lines.append(f"- **Split rule**: {attrs.get(keys.SPLIT_RULE)} · seed {attrs.get(keys.SPLIT_SEED)} · "
                 f"validation fraction {attrs.get(keys.VAL_FRACTION)} · split hash `{attrs.get(keys.SPLIT_HASH)}`")
    lines.append(f"- **Search**: model `{attrs.get(keys.MODEL)}`, pruner {attrs.get(keys.PRUNER)}, "
                 f"budget spent {f.spent_seconds / 60:.1f} min of trial time")
    lines.append(f"- **Trials**: {states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
                 f"{states[TrialState.FAIL]} failed, {running} running"
                 + (f", {states[TrialState.WAITING]} queued" if states[TrialState.WAITING] else ""))
    lines.append(f"- **Best trial**: {best_trial.number} ({best.family}), group-validation accuracy "
                 f"{pct(best.val_accuracy)} % at epoch {best_trial.user_attrs.get(keys.BEST_EPOCH, 0) + 1}")
    lines.append(f"- **Best parameters** (searched and fixed): {_fmt_params(f.best_params)}")

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

    lines += stages_section(f)

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

    lines += ["", "## Reproducibility", "",
              f"- hematune git commit: `{f.git_commit or 'unknown'}`",
              f"- data fingerprint `{attrs.get(keys.DATA_FINGERPRINT)}`, split hash `{attrs.get(keys.SPLIT_HASH)}`, "
              f"TEST fingerprint `{best.predictions.test_fingerprint if best.predictions else '—'}`",
              f"- study seed {attrs.get(keys.SEED)}; best trial seed {best_trial.user_attrs.get(keys.SEED)}",
              f"- training: backend {best_trial.user_attrs.get(keys.BACKEND)}, device {best_trial.user_attrs.get(keys.DEVICE)}, "
              + ", ".join(f"{k} {v}" for k, v in f.trained_with.items()),
              f"- this report: backend {f.backend}, device {f.device}, "
              + ", ".join(f"{k} {v}" for k, v in f.versions.items())]

    evaluated = [r for r in rows if r.predictions is not None]
    lines += ["", "## About TEST", "",
              f"TEST ({f.test_files} files, {'the data set’s TEST folder' if attrs.get(keys.LAYOUT) == 'train_test' else 'the files the split manifest set aside'}) "
              "was never read by the search: models were selected on group-validation accuracy alone. TEST was "
              f"evaluated only for this report, once per reported model file ({len(evaluated)} model(s): trials "
              f"{', '.join(str(r.trial.number) for r in evaluated) or 'none'}); the predictions are saved beside "
              "the figures and re-used, not recomputed, when the report is generated again. "
              + ("Re-used saved predictions for trial(s) " + ", ".join(str(r.trial.number) for r in evaluated
                                                                     if r.predictions.reused) + "."
                 if any(r.predictions.reused for r in evaluated) else "")]
    if f.stages is not None:
        scored = {r.model_sha256: r for r in f.stages.rows if r.predictions is not None}
        lines[-1] = lines[-1].rstrip() + (f" The {len(scored)} distinct model file(s) of the selection stages were scored the same way, "
                      "their predictions saved as `predictions-model-<sha256 prefix>.npz`; `make select` itself "
                      "never reads TEST.")
    lines.append("")

    return "\n".join(lines)
