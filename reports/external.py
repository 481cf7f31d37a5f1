"""External validation: score a release on images from another source (``hematune evaluate``).

A model chosen and tested on one lab's images has been shown to work on that
lab's staining, microscope, camera and cell picking. Before a lab trusts it on
its own microscope it scores it on its own labelled cells: that is what this
command does, and its report says plainly that these are data the model never
saw, from another source — and what the numbers do and do not prove.

How the data are read (``DATA=``, as `data_pipeline.ingest.scan` reads it):

* **flat** ``DATA/<class>/…``: every image is scored. Another lab's folder was
  never part of any split of the release's study, so there is nothing to hold
  back.
* **TRAIN/TEST** ``DATA/TRAIN/<class>/`` + ``DATA/TEST/<class>/``: only TEST is
  scored. A folder laid out that way says which part is meant for
  evaluation; its TRAIN part may have trained (or will fine-tune) a model, so
  scoring it would not be an external test. The report says how many TRAIN
  images were left out.

Class folders are matched to the release's classes by name, ignoring case. A
subset of the release's classes is fine (metrics over the classes present;
the model still chooses among all of its classes, and predictions of an
absent class count as errors); a folder the release has no class for is
refused in one line that names it and the release's classes. The release's
own data are refused too (its TEST set, or for a flat study its training
pool, recognised by their content fingerprints): numbers on them are in the
release's ``metrics.json`` already and are not external.

The accuracy interval resamples source groups (the GROUPS rule, default
``auto``, as the search applies it): copies of one cell are right or wrong
together. Unreadable images are skipped, counted and named in the report.
Collecting the facts happens here; `reports.external_markdown` renders them.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from data_pipeline.cache import load_or_decode
from data_pipeline.files import replacing, write_atomic
from data_pipeline.ingest import ImageSet, fingerprint, scan
from data_pipeline.split import resolve_groups
from reports import OUT_DIR, evaluate, figures
from reports.errors import ReportError
from reports.external_markdown import ExternalData, ExternalFacts, render
from reports.release import MODEL, Release, verify
from reports.study import sha256_file
from search import metrics as scoring


@dataclass
class ExternalReport:
    path: Path
    figures_dir: Path
    summary: dict


# --- the data ---------------------------------------------------------------

def match_classes(folders: tuple[str, ...], labels: list[str], where: str) -> dict[str, int]:
    """Class folder → index of the release's class of the same name (exact first, then ignoring case).

    A folder the release has no class for, or two folders for one class, is
    refused in one line: scoring them would count right answers as wrong.
    """
    exact = {label: i for i, label in enumerate(labels)}
    folded: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        folded.setdefault(label.casefold(), []).append(i)
    matched, unknown = {}, []
    for folder in folders:
        if folder in exact:
            matched[folder] = exact[folder]
        elif len(folded.get(folder.casefold(), [])) == 1:
            matched[folder] = folded[folder.casefold()][0]
        else:
            unknown.append(folder)
    if unknown:
        raise ReportError(f"DATA={where}: class folder(s) {', '.join(unknown)} not among the release's classes "
                          f"({', '.join(labels)}); rename each folder to one of them (case does not matter) or "
                          "remove it")
    taken: dict[int, list[str]] = {}
    for folder, index in matched.items():
        taken.setdefault(index, []).append(folder)
    double = next((names for names in taken.values() if len(names) > 1), None)
    if double:
        raise ReportError(f"DATA={where}: folders {' and '.join(double)} are both the release's class "
                          f"{labels[matched[double[0]]]}; merge them into one folder")
    return matched


def load_external(data: str | os.PathLike, labels: list[str], groups: str = "auto") -> ExternalData:
    """Scan DATA, match its class folders to ``labels``, pick the part to score and its source groups."""
    index = scan(data, read_test=True)  # DataError (one line, exit 2) on a bad layout
    images, part, left_out = index.train, "all of DATA (flat layout: every image in its class folders)", 0
    if index.layout == "train_test":
        images, left_out = index.test, len(index.train)
        part = (f"DATA's TEST folder (TRAIN/TEST layout: TEST is the part meant for evaluation; the "
                f"{left_out} TRAIN images were not scored)")
    matched = match_classes(index.classes, labels, str(index.root))
    rule = resolve_groups(groups, index, images)  # groups by DATA's own folder names, before relabelling
    relabelled = ImageSet(images.files, tuple(matched[index.classes[label]] for label in images.labels))
    folders = {folder: labels[i] for folder, i in matched.items()}
    return ExternalData(root=index.root, layout=index.layout, part=part, images=relabelled, folders=folders,
                        groups=list(rule.groups), groups_rule=rule.description,
                        fingerprint=fingerprint(images, index.root), left_out=left_out, not_images=index.skipped)


def refuse_own_data(data: ExternalData, release: Release) -> None:
    """Refuse the release's own TEST set or (flat studies) training pool: not external, and already scored."""
    metrics = release.metrics
    own_test = (metrics.get("test") or {}).get("test_fingerprint")
    if own_test and data.fingerprint == own_test:
        raise ReportError(f"DATA={data.root}: these are the TEST images release {release.path} was scored on "
                          f"(fingerprint {own_test}); their numbers are in its metrics.json — give images from "
                          "another source")
    own_pool = metrics.get("data_fingerprint")
    if own_pool and data.layout == "flat" and data.fingerprint == own_pool:  # a flat study's pool is all of DATA
        raise ReportError(f"DATA={data.root}: this is the data release {release.path} was trained on "
                          f"(fingerprint {own_pool}); external validation needs images from another source")


# --- scoring ----------------------------------------------------------------

def _own_test(metrics: dict, present_names: list[str]) -> dict | None:
    """The release's TEST accuracy, overall and restricted to the classes present here (from its per-class
    recall and support), so the two sources are compared on the same classes."""
    test = metrics.get("test") or {}
    if test.get("accuracy") is None:
        return None
    rows = [c for c in test.get("per_class") or [] if c.get("class") in present_names]
    support = sum(int(c.get("support", 0)) for c in rows)
    same = sum(float(c["recall"]) * int(c["support"]) for c in rows) / support if support else None
    return {"accuracy": float(test["accuracy"]), "ci": test.get("accuracy_ci95"), "images": test.get("images"),
            "accuracy_on_classes_present": same, "images_on_classes_present": support,
            "groups": (test.get("bootstrap") or {}).get("resampled")}


def _save_predictions(path: Path, facts: ExternalFacts) -> None:
    """Every scored file with its label and probabilities, so each number in the report can be recomputed."""
    with replacing(path) as tmp:
        np.savez_compressed(
            tmp, files=np.asarray(facts.files, dtype=str), y_true=facts.y_true, probs=facts.probs,
            classes=np.asarray(facts.labels), groups=facts.groups.astype(str), model_sha256=facts.model_sha256,
            data_fingerprint=facts.data.fingerprint, skipped_files=np.asarray(list(facts.skipped), dtype=str),
            skipped_reasons=np.asarray(list(facts.skipped.values()), dtype=str))


def report_stem(release_path: Path, data_root: Path) -> str:
    """``external-<release name>-<version>-<data folder name>``: one report per release version and data folder."""
    return f"external-{release_path.parent.name}-{release_path.name}-{data_root.name}"


def evaluate_release(release: str | os.PathLike, data: str | os.PathLike, groups: str = "auto",
                     out_dir: Path = OUT_DIR, batch_size: int = 64) -> ExternalReport:
    """Verify ``release``, score it on ``data`` and write ``<out_dir>/external-….md`` with its figures,
    predictions and ``summary.json`` in the folder of the same name."""
    from search.environment import device_description, git_commit, package_versions

    checked = verify(release)  # checksums, safe-mode load: a damaged release never scores
    labels = list(checked.labels)
    ext = load_external(data, labels, groups)
    refuse_own_data(ext, checked)

    size = int(checked.preprocessing.get("image_size") or evaluate.input_size(checked.model))
    decoded = load_or_decode(ext.images, size)
    pixels, y_true = decoded.usable_arrays()
    if len(y_true) == 0:
        raise ReportError(f"DATA={ext.root}: none of its {len(ext.images)} images could be read "
                          f"(first: {next(iter(decoded.problems.items()), ('', ''))[1]}); nothing to score")
    probs = evaluate.predict_probs(checked.model, pixels, batch_size=batch_size)
    y_true = np.asarray(y_true, dtype=int)
    y_pred = probs.argmax(axis=1)
    kept = np.asarray(ext.groups, dtype=str)[decoded.usable]
    files = [os.path.relpath(f, ext.root) for f, ok in zip(ext.images.files, decoded.usable) if ok]
    present = sorted(set(y_true.tolist()))
    per_class = [row for i, row in enumerate(scoring.per_class(y_true, y_pred, labels)) if i in present]
    calib = evaluate.calibration(y_true, probs)

    out_dir = Path(out_dir)
    stem = report_stem(checked.path, ext.root)
    figures_dir = out_dir / stem
    figures_dir.mkdir(parents=True, exist_ok=True)
    confusion = scoring.confusion(y_true, y_pred, len(labels))
    title = f"{ext.root.name}: release {checked.path.parent.name} {checked.path.name}"
    scoring.confusion_png(confusion, labels, figures_dir / "confusion-matrix.png", f"confusion matrix, {title}")
    figures.reliability(calib.bins, calib.ece, figures_dir / "reliability.png", f"reliability, {title}")
    facts = ExternalFacts(
        release=checked, release_name=checked.path.parent.name, version=checked.path.name,
        model_sha256=sha256_file(checked.path / MODEL), data=ext, files=files, y_true=y_true, probs=probs,
        groups=kept, present=present, skipped=dict(decoded.problems), accuracy=scoring.accuracy(y_true, y_pred),
        ci=evaluate.bootstrap_ci((y_pred == y_true).astype("float64"), kept),
        macro_f1=float(np.mean([row["f1"] for row in per_class])), per_class=per_class, confusion=confusion,
        calibration=calib, predicted_absent=int(np.sum(~np.isin(y_pred, present))),
        own_test=_own_test(checked.metrics, [labels[i] for i in present]),
        figs={name: f"{stem}/{name}" for name in ("confusion-matrix.png", "reliability.png")},
        predictions_file=figures_dir / "predictions.npz", created=time.strftime("%Y-%m-%d %H:%M %Z"),
        git_commit=git_commit(), backend=keras.backend.backend(), device=device_description(),
        versions=package_versions())
    _save_predictions(facts.predictions_file, facts)
    summary = summary_of(facts)
    write_atomic(figures_dir / "summary.json", json.dumps(summary, indent=1, default=str))
    path = out_dir / f"{stem}.md"
    write_atomic(path, render(facts))
    return ExternalReport(path, figures_dir, summary)


def summary_of(f: ExternalFacts) -> dict:
    """The report's numbers as JSON (``summary.json`` beside the figures)."""
    return {
        "release": str(f.release.path), "release_name": f.release_name, "version": f.version,
        "model_sha256": f.model_sha256, "study": f.release.metrics.get("study"),
        "trial": f.release.metrics.get("trial"), "stage": f.release.metrics.get("stage"),
        "data": str(f.data.root.resolve()), "layout": f.data.layout, "scored": f.data.part,
        "data_fingerprint": f.data.fingerprint, "class_folders": f.data.folders,
        "classes_present": [f.labels[i] for i in f.present], "images": int(len(f.y_true)),
        "unreadable": f.skipped, "not_image_files": list(f.data.not_images), "train_images_left_out": f.data.left_out,
        "groups_rule": f.data.groups_rule, "groups": f.group_count, "accuracy": f.accuracy, "accuracy_ci95": list(f.ci),
        "macro_f1_over_classes_present": f.macro_f1, "per_class": f.per_class, "confusion": f.confusion.tolist(),
        "ece": f.calibration.ece, "calibration_bins": f.calibration.bins, "predicted_absent_class": f.predicted_absent,
        "release_own_test": f.own_test, "predictions": str(f.predictions_file), "created": f.created,
        "bootstrap": {"samples": evaluate.BOOTSTRAP_SAMPLES, "seed": evaluate.BOOTSTRAP_SEED,
                      "resampled": f.data.groups_rule},
        "hematune_commit": f.git_commit, "backend": f.backend, "device": f.device, "versions": f.versions,
    }
