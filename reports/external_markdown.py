"""The external-validation report's text: Markdown from the facts `reports.external` collected.

Formatting only, in the study report's style (`reports.report_markdown`: the
same percent format, interval, per-class table, figures and calibration
wording), so the wording can change without touching how the numbers are made
and the Markdown says what ``summary.json`` says.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_pipeline.ingest import ImageSet
from reports import evaluate
from reports.release import Release
from reports.report_markdown import pct

SHOWN_PROBLEMS = 20  # unreadable files named in the report; all of them are in summary.json


@dataclass
class ExternalData:
    """The images to score, labelled with the release's class indices."""

    root: Path
    layout: str  # "flat" or "train_test" (data_pipeline.ingest)
    part: str  # what was scored, in words
    images: ImageSet  # labels are indices into the release's labels
    folders: dict[str, str]  # class folder name → release class it was matched to
    groups: list[str]  # source group of every image
    groups_rule: str  # the grouping rule actually applied (data_pipeline.split.GroupRule.description)
    fingerprint: str  # content fingerprint of the scored images (data_pipeline.ingest.fingerprint)
    left_out: int = 0  # TRAIN images of a TRAIN/TEST folder, not scored
    not_images: tuple[str, ...] = ()  # files under DATA that are not image files (kept out by scan)


@dataclass
class ExternalFacts:
    """Everything the external-validation report states, collected once by `evaluate_release`."""

    release: Release
    release_name: str
    version: str
    model_sha256: str
    data: ExternalData
    files: list[str]  # scored files, relative to DATA
    y_true: np.ndarray
    probs: np.ndarray
    groups: np.ndarray  # of the scored files
    present: list[int]  # release class indices with images in DATA
    skipped: dict[str, str]  # unreadable file → why
    accuracy: float
    ci: tuple[float, float]
    macro_f1: float  # over the classes present
    per_class: list[dict]  # search.metrics.per_class rows of the classes present
    confusion: np.ndarray  # all release classes × all release classes (rows of absent classes are zero)
    calibration: evaluate.Calibration
    predicted_absent: int  # images predicted as a release class that DATA has no folder for
    own_test: dict | None  # the release's own TEST accuracy, overall and on the classes present here
    figs: dict[str, str]  # figure → path relative to the report
    predictions_file: Path
    created: str
    git_commit: str | None
    backend: str
    device: str
    versions: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return list(self.release.labels)

    @property
    def group_count(self) -> int:
        return len(set(self.groups.tolist()))


def _own_test_lines(f: ExternalFacts) -> list[str]:
    own = f.own_test
    if own is None:
        return ["The release records no TEST accuracy of its own to compare with."]
    ci = own.get("ci") or [float("nan"), float("nan")]
    line = (f"On its own TEST set (the study's data, {own.get('images')} images) the release scored "
            f"{pct(own['accuracy'])} % [{pct(ci[0])}, {pct(ci[1])}]")
    same = own.get("accuracy_on_classes_present")
    if len(f.present) < len(f.labels) and same is not None:
        line += (f", and {pct(same)} % on the {len(f.present)} classes present here "
                 f"({own.get('images_on_classes_present')} images; from its per-class recall)")
        reference = same
    else:
        reference = own["accuracy"]
    gap = round((f.accuracy - reference) * 100, 1)
    return [line + f". Here: {pct(f.accuracy)} %, a difference of **{gap:+.1f} points** from its own TEST "
                   "on the same classes."]


def _own_ece(metrics: dict) -> str:
    ece = (metrics.get("test") or {}).get("ece")
    return "" if ece is None else f"; on its own TEST it was {ece:.3f}"


def _confusion_table(f: ExternalFacts) -> list[str]:
    """Rows: the classes DATA has; columns: every class the model can answer (it chooses among all of them)."""
    labels = f.labels
    lines = ["| true ↓ / predicted → | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for i in f.present:
        row = f.confusion[i]
        lines.append(f"| {labels[i]} | " + " | ".join(str(int(n)) for n in row) + " |")
    return lines


def render(f: ExternalFacts) -> str:
    """The report as Markdown."""
    data, rel, labels = f.data, f.release, f.labels
    metrics = rel.metrics
    stage = f", stage {metrics['stage']}" if metrics.get("stage") else ""
    low, high = f.ci
    absent = [c for i, c in enumerate(labels) if i not in f.present]
    lines = [f"# External validation: release `{f.release_name}` {f.version} on `{data.root.name}`", "",
             f"Generated {f.created} by `hematune evaluate`. **This is data the model never saw, from another "
             f"source** than the study it came from (`{metrics.get('study')}`{stage}): none of these images "
             "trained the model, chose it, or made its release's TEST numbers — as far as hematune can check, "
             "which is said below.", ""]

    lines += ["## Summary", ""]
    lines.append(f"- **Release**: `{rel.path}` — {metrics.get('family')}, trial {metrics.get('trial')}{stage}, "
                 f"{len(labels)} classes, {rel.preprocessing.get('image_size')} px; model sha256 "
                 f"`{f.model_sha256[:16]}…`")
    lines.append(f"- **Data**: `{data.root}` ({data.layout} layout); scored {data.part}; fingerprint "
                 f"`{data.fingerprint}`")
    lines.append(f"- **Images**: {len(f.y_true)} scored in {f.group_count} source groups"
                 + (f"; {len(f.skipped)} unreadable (skipped, listed below)" if f.skipped else "; none unreadable")
                 + (f"; {len(data.not_images)} non-image file(s) kept out" if data.not_images else ""))
    lines.append("- **Classes**: " + ", ".join(f"folder `{folder}` → {label}" for folder, label in data.folders.items())
                 + (f". Not in DATA: {', '.join(absent)} (metrics are over the classes present; the model still "
                    "chooses among all its classes)" if absent else ""))
    lines.append(f"- **Accuracy**: **{pct(f.accuracy)} %** [95 % CI {pct(low)}, {pct(high)}] · macro-F1 "
                 f"{f.macro_f1:.3f}" + (" (over the classes present)" if absent else "")
                 + f" · ECE {f.calibration.ece:.3f}")
    lines.append(f"- **Source groups** (GROUPS rule): {data.groups_rule}")
    if f.predicted_absent:
        lines.append(f"- **{f.predicted_absent} image(s) predicted as a class DATA has no folder for** "
                     f"({', '.join(absent)}): counted as errors")

    lines += ["", "## Compared with the release's own TEST", ""] + _own_test_lines(f)

    lines += ["", "## Per-class metrics", "", "| class | precision | recall | F1 | images |",
              "|---|---:|---:|---:|---:|"]
    for c in f.per_class:
        lines.append(f"| {c['class']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")

    lines += ["", "## Confusion matrix", "", *_confusion_table(f), "",
              f"![confusion matrix]({f.figs['confusion-matrix.png']})"
              + ("" if not absent else f"  \nIn the figure the rows of {', '.join(absent)} are empty: DATA has no "
                                       "images of them."),
              "", "## Calibration", "",
              f"Expected calibration error: **{f.calibration.ece:.3f}** ({evaluate.ECE_BINS} equal-width confidence "
              "bins; 0 = confidence matches accuracy)" + _own_ece(metrics) + ". A model calibrated on its own "
              "TEST can be over- or under-confident on another source's images: trust the confidence it shows "
              "here, not there.", "",
              f"![reliability plot]({f.figs['reliability.png']})"]

    lines += ["", "## What these numbers do and do not prove", "",
              f"- They estimate how this model does on images like these (`{data.root.name}`): their staining, "
              "microscope, camera, resolution and way of picking and cropping cells, with their labels taken as "
              "true.",
              f"- The 95 % interval ({evaluate.BOOTSTRAP_SAMPLES} bootstrap resamples of the {f.group_count} source "
              "groups, seed " f"{evaluate.BOOTSTRAP_SEED}) covers the chance of which cells happened to be "
              "collected; it does not cover a different microscope, stain batch or labelling habit."
              + (" The file names carry no source group, so every file counts as its own cell: if several files "
                 "are copies or crops of one cell, the interval is too narrow — give GROUPS=csv:<file> or a "
                 "filename pattern." if data.groups_rule.startswith("none") else ""),
              "- They do not show that the model works on classes it was not given here"
              + (f" ({', '.join(absent)})" if absent else "") + ", on other sources, or on cells that are not "
              "white blood cells — the model always answers one of its classes.",
              "- hematune checked, by content fingerprint, that these are not the release's own TEST set nor (for "
              "a flat study) its training pool; it cannot check image by image that none of these cells was ever "
              "in the training data. Only the lab that made them can say so."]

    if f.skipped:
        lines += ["", "## Unreadable images", "",
                  f"{len(f.skipped)} file(s) could not be read and were not scored"
                  + (f" (the first {SHOWN_PROBLEMS} below; all in summary.json)" if len(f.skipped) > SHOWN_PROBLEMS
                     else "") + ":", ""]
        lines += [f"- `{name}`: {why}" for name, why in list(f.skipped.items())[:SHOWN_PROBLEMS]]

    lines += ["", "## Provenance", "",
              f"- release `{rel.path}` (verified: every checksum matches, model loaded in Keras safe mode), model "
              f"sha256 `{f.model_sha256}`; study `{metrics.get('study')}`, trial {metrics.get('trial')}{stage}, "
              f"promoted {metrics.get('created', '—')} at hematune commit "
              f"`{metrics.get('hematune_commit') or 'unknown'}`",
              f"- data `{data.root.resolve()}`, fingerprint `{data.fingerprint}` (content of every scored file, with "
              f"its class); source groups by {data.groups_rule}",
              f"- predictions of every scored file: `{f.predictions_file}`; numbers: `summary.json` beside it",
              f"- this evaluation: {f.created}, hematune commit `{f.git_commit or 'unknown'}`, backend {f.backend}, "
              f"device {f.device}, " + ", ".join(f"{k} {v}" for k, v in f.versions.items()), ""]
    return "\n".join(lines)
