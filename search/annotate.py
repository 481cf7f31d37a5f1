"""What optuna-dashboard shows about a study: notes, figures and model files.

A person judging trials in the dashboard needs more than a value: the per-epoch
curve, how each class fares, how fast the model is, where its weights came
from. This module writes that where the dashboard looks for it:

* the study note (Markdown, ``optuna_dashboard.save_note``): data, split rule,
  search space — written once, when the study has no note yet, so a note a
  person edited in the dashboard is never overwritten;
* each trial's note: its curve summary, and for trials that finish in the
  top-k, per-class metrics on the group-VALIDATION set (TEST is read only by
  the report, never during the search);
* trial artifacts (a confusion-matrix PNG and a per-class metrics JSON) and
  the user attributes ``val_macro_f1`` and ``latency_ms_batch1``.

Why a wrapper around the objective and not only an Optuna callback: callbacks
run after the trial is stored as finished, and the storage refuses any later
change to a finished trial (``UpdateFinishedTrialError`` for user attributes,
system attributes, hence trial artifacts). So everything trial-level is
written by `TrialAnnotator.wrap` while the trial is still running, after the
objective has scored it and saved its model file.

Model files follow the top-k policy of `search.artifacts`: only the ``keep``
best trials keep a ``.keras`` file. Since a finished trial cannot lose an
artifact, model files are *study* artifacts (named ``trial-00012.keras``), kept
in step with the top-k by the `TrialAnnotator.annotate_trial` callback: a trial
that leaves the top-k loses its model artifact (store file removed, metadata
cleared — what the dashboard's own delete button does), while its figures and
metrics stay on the trial for good (a few kB each).

Artifact files live in ``<studies>/artifacts/<study>/dashboard/`` and are
written atomically (`search.artifact_store`), so a killed search leaves whole
files or none.
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
from optuna.artifacts import upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import TrialState

from data_pipeline.errors import first_line
from search import keys
from search import metrics as scoring
from search.artifact_store import study_store
from search.data import SearchData
from search.layout import artifacts_dir, dashboard_dir, model_path

ARTIFACTS_ATTR_PREFIX = "artifacts:"  # optuna.artifacts' metadata key (study/trial system attribute)
MODEL_ARTIFACT = re.compile(r"^trial-(\d+)\.keras$")
LATENCY_CALLS, LATENCY_WARMUP = 7, 2
METRIC_NAME = "group_val_accuracy"  # the trial value, as the dashboard's axes name it


# --- study note ---------------------------------------------------------------
def _spec_text(spec) -> str:
    if not isinstance(spec, dict):
        return f"fixed `{spec}`"
    kind = spec.get("type")
    if kind == "categorical":
        return "one of " + ", ".join(f"`{c}`" for c in spec.get("choices", []))
    if kind in ("float", "int"):
        log = " (log scale)" if spec.get("log") else ""
        step = f", step {spec['step']}" if spec.get("step") else ""
        return f"{kind} {spec.get('low')} … {spec.get('high')}{log}{step}"
    return ", ".join(f"{k}={v}" for k, v in spec.items())


def _counts_row(counts: dict | None, classes: list) -> str:
    if counts is None:
        return " | ".join("—" for _ in classes)
    return " | ".join(str(counts.get(c, 0)) for c in classes)


def study_note(attrs: dict) -> str:
    """The study's Markdown note from the user attributes `search.runner.open_study` records."""
    classes = list(attrs.get(keys.CLASSES, []))
    test_counts = attrs.get(keys.TEST_COUNTS)
    lines = [
        "## Data",
        f"- folder `{attrs.get(keys.DATA_ROOT, '?')}` (layout `{attrs.get(keys.LAYOUT, '?')}`), "
        f"fingerprint `{attrs.get(keys.DATA_FINGERPRINT, '?')}`",
        f"- {len(classes)} classes: " + ", ".join(f"`{c}`" for c in classes),
        "",
        "| part | " + " | ".join(classes) + " |",
        "|---|" + "---|" * len(classes),
        "| train | " + _counts_row(attrs.get(keys.TRAIN_COUNTS), classes) + " |",
        "| group validation | " + _counts_row(attrs.get(keys.VAL_COUNTS), classes) + " |",
    ]
    if test_counts is not None:
        lines.append("| test | " + _counts_row(test_counts, classes) + " |")
    lines += [
        "",
        "## Split",
        f"- rule `{attrs.get(keys.SPLIT_RULE, '?')}`: images of one source group never sit on both sides; "
        f"{float(attrs.get(keys.VAL_FRACTION, 0)):.0%} of the training groups are held out for validation "
        f"(seed {attrs.get(keys.SPLIT_SEED, '?')}).",
        "- test: " + ("the data set's own `TEST/` folder" if test_counts is None else "held-out groups") +
        " — read only by the report, never during the search.",
        f"- manifest `{attrs.get(keys.SPLIT_MANIFEST, '?')}` (hash `{attrs.get(keys.SPLIT_HASH, '?')}`)",
        "",
        "## Search",
        f"- model `{attrs.get(keys.MODEL, '?')}` · pruner `{attrs.get(keys.PRUNER, '?')}` · seed {attrs.get(keys.SEED, '?')} · "
        f"weights: {attrs.get(keys.WEIGHTS_POLICY, '?')}",
        "- trial value: best-epoch accuracy on the group-validation set; intermediate values: "
        "validation accuracy per epoch.",
    ]
    for family, section in (attrs.get(keys.SPACE) or {}).get("families", {}).items():
        lines += ["", f"### Space: `{family}`", "", "| parameter | range |", "|---|---|"]
        for part in ("training", "model"):
            for name, spec in (section.get(part) or {}).items():
                text = (f"cap {spec} epochs per trial (MAX_EPOCHS= overrides)" if name == "max_epochs"
                        else _spec_text(spec))
                lines.append(f"| `{name}` | {text} |")
    lines += ["", f"_Written by hematune when the study was created ({attrs.get(keys.CREATED, '?')}); "
              "edit freely — hematune never overwrites an existing note._"]
    return "\n".join(lines)


def annotate_study(study: optuna.Study) -> bool:
    """Name the objective and write the study note if the study has none yet; True if written."""
    from optuna_dashboard import get_note, save_note

    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC_NAME])
    if get_note(study).strip():
        return False
    save_note(study, study_note(study.user_attrs))
    return True


# --- per-trial evaluation -----------------------------------------------------
def class_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Per-class precision/recall/F1/support, macro F1, accuracy and the confusion matrix (`search.metrics`)."""
    rows = scoring.per_class(y_true, y_pred, classes)
    return {
        "classes": list(classes),
        "accuracy": scoring.accuracy(y_true, y_pred),
        "macro_f1": float(np.mean([row["f1"] for row in rows])),
        "per_class": {row["class"]: {"precision": round(row["precision"], 4), "recall": round(row["recall"], 4),
                                     "f1": round(row["f1"], 4), "support": row["support"]} for row in rows},
        "confusion_matrix": scoring.confusion(y_true, y_pred, len(classes)).tolist(),
    }


def batch1_latency_ms(model, image: np.ndarray) -> float:
    """Median wall time of one single-image forward pass (after warm-up calls), in ms."""
    return statistics.median(scoring.single_image_times_ms(model, image, LATENCY_CALLS, LATENCY_WARMUP))


def evaluate_model_file(path: Path, data: SearchData) -> tuple[dict, float]:
    """Per-class metrics on the group-validation set and batch-1 latency of a saved trial model."""
    import keras

    model = keras.saving.load_model(path, safe_mode=True)
    try:
        size = int(model.input_shape[1])
        _, _, x_val, y_val = data.arrays(size)
        probabilities = model.predict(x_val, batch_size=128, verbose=0)
        scores = class_metrics(np.asarray(y_val), np.argmax(probabilities, axis=1), list(data.classes))
        latency = batch1_latency_ms(model, x_val[0])
    finally:
        del model
        keras.backend.clear_session()  # as the objective does after each trial: free the graph
    return scores, latency


# --- trial note ---------------------------------------------------------------
def _curve_summary(accs: list, losses: list, best_epoch: int | None) -> list[str]:
    if not accs:
        return ["_No epoch finished._"]
    lines = []
    if best_epoch is not None and best_epoch < len(accs):
        after = accs[best_epoch + 1:]
        trend = (f"then {len(after)} more epoch(s), last {accs[-1]:.4f}" if after else "the last epoch")
        lines.append(f"Validation accuracy: first {accs[0]:.4f} → best **{accs[best_epoch]:.4f}** at epoch "
                     f"{best_epoch + 1} → {trend}.")
    lines += ["", "| epoch | val accuracy | val loss |", "|---:|---:|---:|"]
    for i, acc in enumerate(accs):
        loss = losses[i] if i < len(losses) else math.nan
        mark = " ★" if i == best_epoch else ""
        lines.append(f"| {i + 1}{mark} | {acc:.4f} | {loss:.4f} |")
    return lines


def trial_note(number: int, state: str, value: float | None, attrs: dict, params: dict,
               metrics: dict | None, model_file: str | None, keep_top: int) -> str:
    """The trial's Markdown note."""
    family = attrs.get(keys.FAMILY, "?")
    head = f"## Trial {number} · `{family}` · {state}"
    facts = []
    if value is not None:
        facts.append(f"group-validation accuracy **{value:.4f}**")
    if attrs.get(keys.BEST_EPOCH) is not None:
        facts.append(f"best epoch {attrs[keys.BEST_EPOCH] + 1} of {attrs.get(keys.EPOCHS_TRAINED, '?')} trained "
                     f"(cap {attrs.get(keys.MAX_EPOCHS, '?')})")
    if attrs.get(keys.WALL_SECONDS) is not None:
        facts.append(f"{attrs[keys.WALL_SECONDS]:.0f} s")
    lines = [head, "", " · ".join(facts) if facts else ""]
    reason = attrs.get(keys.PRUNE_REASON) or attrs.get(keys.FAIL_REASON) or attrs.get(keys.STOPPED_BY)
    if reason:
        lines += ["", f"> {reason}"]
    lines += ["", f"weights `{attrs.get(keys.WEIGHTS_ORIGIN, '?')}` · {attrs.get(keys.PARAM_COUNT, '?')} parameters · "
              f"device `{attrs.get(keys.DEVICE, '?')}` · backend `{attrs.get(keys.BACKEND, '?')}`"]
    if attrs.get(keys.LATENCY_MS_BATCH1) is not None:
        lines[-1] += f" · batch-1 latency **{attrs[keys.LATENCY_MS_BATCH1]:.1f} ms** (median, on that device)"
    lines += ["", "### Curve", *_curve_summary(attrs.get(keys.VAL_ACCURACY_PER_EPOCH, []),
                                               attrs.get(keys.VAL_LOSS_PER_EPOCH, []), attrs.get(keys.BEST_EPOCH))]
    if metrics is not None:
        lines += ["", f"### Per class (group validation, best epoch) · macro F1 {metrics['macro_f1']:.4f}", "",
                  "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        for cls, m in metrics["per_class"].items():
            lines.append(f"| {cls} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
        lines += ["", "Confusion matrix and metrics: this trial's artifacts (`confusion-matrix-val.png`, "
                  "`metrics-val.json`)."]
    if model_file:
        lines += ["", f"Model file `{model_file}`: a study artifact while this trial is in the top {keep_top} "
                  "(removed when it drops out)."]
    if params:
        lines += ["", "### Parameters", "", " · ".join(
            f"`{k}`={v:.4g}" if isinstance(v, float) else f"`{k}`={v}" for k, v in params.items())]
    return "\n".join(lines)


# --- the annotator ----------------------------------------------------------------
class TrialAnnotator:
    """Writes each trial's note/attributes/artifacts and keeps the study's model artifacts in step.

    ``wrap(objective)`` annotates a trial while it is still running (see the
    module docstring); ``annotate_trial`` is the Optuna callback that syncs the
    top-k model artifacts once the trial is stored. A failure here never fails
    or stops the search: it is recorded as the ``annotation_error`` user
    attribute (or, once the trial is stored, printed by ``warn``).
    """

    def __init__(self, data: SearchData, studies_dir: Path, keep_top: int = 3,
                 warn: Callable[[str], None] | None = None):
        self.data, self.studies_dir, self.keep_top = data, Path(studies_dir), keep_top
        self.warn = warn or (lambda text: None)

    def wrap(self, objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
        def annotated(trial: optuna.Trial) -> float:
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                self._safely(trial, "PRUNED", None)
                raise
            except Exception:
                self._safely(trial, "FAIL", None)
                raise
            self._safely(trial, "COMPLETE", value)
            return value
        return annotated

    def _safely(self, trial: optuna.Trial, state: str, value: float | None) -> None:
        try:
            self.annotate_running(trial, state, value)
        except Exception as exc:  # an annotation must never cost the trial
            self._record_error(trial, exc, "note")

    def _record_error(self, trial: optuna.Trial, exc: Exception, what: str) -> None:
        message = f"{what}: {type(exc).__name__}: {first_line(str(exc))}"[:300]
        try:
            trial.set_user_attr(keys.ANNOTATION_ERROR, message)
        except Exception:
            pass
        self.warn(f"trial {trial.number}: dashboard annotation incomplete ({message})")

    def annotate_running(self, trial: optuna.Trial, state: str, value: float | None) -> None:
        """Note, metrics, figures and latency for a trial that has just been scored (still RUNNING)."""
        from optuna_dashboard import save_note

        metrics, model_file = None, None
        path = model_path(self.studies_dir, trial.study.study_name, trial.number)
        if state == "COMPLETE" and path.is_file():
            model_file = path.name
            try:
                metrics = self.evaluate(trial, path)
            except Exception as exc:  # the note is still worth writing
                self._record_error(trial, exc, "metrics")
        save_note(trial, trial_note(trial.number, state, value, trial.user_attrs, trial.params, metrics,
                                    model_file, self.keep_top))

    def evaluate(self, trial: optuna.Trial, path: Path) -> dict:
        """Validation metrics and latency of the trial's saved model, as user attributes and trial artifacts."""
        metrics, latency = evaluate_model_file(path, self.data)
        trial.set_user_attr(keys.VAL_MACRO_F1, round(metrics["macro_f1"], 5))
        trial.set_user_attr(keys.LATENCY_MS_BATCH1, round(latency, 3))
        store = study_store(self.studies_dir, trial.study.study_name)
        with tempfile.TemporaryDirectory(prefix="hematune-annotate-") as tmp:
            png = Path(tmp) / "confusion-matrix-val.png"
            scoring.confusion_png(metrics["confusion_matrix"], metrics["classes"], png,
                                  f"trial {trial.number} · group validation · acc {metrics['accuracy']:.3f}")
            report = Path(tmp) / "metrics-val.json"
            report.write_text(json.dumps({"trial": trial.number, "split": "group-validation", **metrics}, indent=1))
            for file in (png, report):
                upload_artifact(artifact_store=store, file_path=str(file), study_or_trial=trial)
        return metrics

    def annotate_trial(self, study: optuna.Study, frozen_trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback (after the trial is stored): model artifacts follow the top-k."""
        if frozen_trial.state != TrialState.COMPLETE:
            return
        try:
            sync_model_artifacts(study, self.studies_dir)
        except Exception as exc:
            self.warn(f"dashboard model artifacts not updated ({type(exc).__name__}: {exc})"[:300])


def study_artifacts(study: optuna.Study) -> list[dict]:
    """The study's artifact metadata, skipping cleared entries.

    (Not ``optuna.artifacts.get_all_artifact_meta``: it fails on the ``null``
    a removal leaves — the storage has no way to delete a study attribute.)
    """
    attrs = study._storage.get_study_system_attrs(study._study_id)
    metas = [json.loads(v) for k, v in attrs.items() if k.startswith(ARTIFACTS_ATTR_PREFIX)]
    return [m for m in metas if m]


def _clear_study_artifact(study: optuna.Study, store, artifact_id: str) -> None:
    """Remove an artifact's file and null its metadata (as the dashboard's delete button does)."""
    try:
        store.remove(artifact_id)
    except ArtifactNotFound:
        pass
    study._storage.set_study_system_attr(study._study_id, ARTIFACTS_ATTR_PREFIX + artifact_id, json.dumps(None))


def sync_model_artifacts(study: optuna.Study, studies_dir: Path) -> set[int]:
    """Make the study's ``trial-NNNNN.keras`` artifacts exactly the model files on disk; returns their trial numbers.

    The model files are the truth (`search.artifacts.save_if_top` keeps the
    top-k): a file without an artifact is uploaded, an artifact without a file
    (its trial left the top-k, or an upload was cut short) is removed, and
    duplicates from concurrent workers are folded into one.
    """
    store = study_store(studies_dir, study.study_name)
    folder = artifacts_dir(studies_dir, study.study_name)
    on_disk = {int(m.group(1)): folder / name for name in os.listdir(folder)
               if (m := MODEL_ARTIFACT.match(name))} if folder.is_dir() else {}
    seen: set[int] = set()
    for meta in study_artifacts(study):
        match = MODEL_ARTIFACT.match(meta["filename"])
        if not match:
            continue
        number = int(match.group(1))
        present = (dashboard_dir(studies_dir, study.study_name) / meta["artifact_id"]).is_file()
        if number in on_disk and number not in seen and present:
            seen.add(number)
        else:
            _clear_study_artifact(study, store, meta["artifact_id"])
    for number in sorted(set(on_disk) - seen):
        try:
            upload_artifact(artifact_store=store, file_path=str(on_disk[number]), study_or_trial=study,
                            mimetype="application/octet-stream")
        except FileNotFoundError:
            continue  # swept by another worker meanwhile; its stale metadata is cleared next time
        seen.add(number)
    return seen
