"""Export a trial's model, promote it to a versioned release, verify a release.

A release is a folder ``releases/<name>/v<N>/`` that holds everything needed
to use and to trust the model without the study: ``model.keras``,
``labels.json``, ``preprocessing.json``, ``metrics.json``, ``MODEL_CARD.md``
and ``SHA256SUMS`` over all of them.

Why it is built this way:

* **Atomic.** The release is written into a hidden temporary folder beside
  the versions and renamed to ``v<N>`` only when complete. A crash, Ctrl-C or
  ``kill -9`` leaves either nothing or a whole release; leftovers of dead
  writers are swept on the next promote.
* **Never overwritten.** Renaming onto an existing (never empty) ``v<N>``
  fails, so two promotes racing each get their own version.
* **Champion pointer.** ``releases/<name>/champion`` holds the version that
  ``predict --release releases/<name>`` uses. The first release becomes
  champion; later ones only when asked (``--champion``), so a new version can
  be inspected before it serves.
* **Verified before use.** Every checksum is checked, files not listed are
  refused, and the model is loaded in Keras safe mode (no arbitrary code).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import keras
import yaml

from data_pipeline.cache import process_alive
from data_pipeline.errors import first_line
from data_pipeline.files import write_atomic
from reports import OUT_DIR, evaluate
from reports.errors import ReportError
from reports.study import (
    StudyView,
    check_data_unchanged,
    data_root,
    family_params,
    sha256_file,
    test_groups,
    test_images,
)
from search import keys
from search import metrics as scoring  # the dashboard's scoring too

MODEL, LABELS, PREPROCESSING, METRICS, CARD, SUMS = ("model.keras", "labels.json", "preprocessing.json",
                                                    "metrics.json", "MODEL_CARD.md", "SHA256SUMS")
RELEASE_FILES = (MODEL, LABELS, PREPROCESSING, METRICS, CARD)
CHAMPION = "champion"
RELEASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
VERSION = re.compile(r"^v(\d+)$")
STALE_TMP_S = 6 * 3600
_SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


# --- small atomic helpers ----------------------------------------------------

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as handle:
        os.fsync(handle.fileno())


def write_checksums(folder: Path) -> None:
    lines = [f"{sha256_file(folder / name)}  {name}" for name in sorted(p.name for p in folder.iterdir()
                                                                        if p.is_file() and p.name != SUMS)]
    _write(folder / SUMS, "\n".join(lines) + "\n")


def _sweep_stale(base: Path) -> None:
    """Remove temporary folders left by promotes that died (kill -9, power loss)."""
    for path in base.glob(".tmp-*"):
        match = re.match(r"^\.tmp-(\d+)-", path.name)
        dead = match is not None and not process_alive(int(match.group(1)))
        if dead or time.time() - path.stat().st_mtime > STALE_TMP_S:
            shutil.rmtree(path, ignore_errors=True)


# --- what a release says about its model ---------------------------------------

def _all_layers(model: keras.Model):
    """The model's layers, and those of the models nested in it (an ensemble's members, a TTA model's inner one)."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def preprocessing_info(model: keras.Model, family: str) -> dict:
    """What a caller must do to an image before the model (and what the model does itself)."""
    inside = []
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Rescaling):
            step = {"layer": layer.name, "scale": float(layer.scale), "offset": float(layer.offset)}
        elif layer.name == "caffe_preprocessing":
            step = {"layer": layer.name, "op": "RGB→BGR and ImageNet mean subtraction"}
        else:
            continue
        if step not in inside:  # an ensemble's members each scale the same way: say it once
            inside.append(step)
    return {
        "image_size": evaluate.input_size(model),
        "input": "RGB, shape (image_size, image_size, 3), pixel values 0–255 (uint8 or float); no scaling by the caller",
        "resize": "stretch to a square, bilinear (PIL), as data_pipeline.cache.decode_image does",
        "call": "model.predict(x), or model(x, training=False)",
        "scaling_inside_model": inside or "inside the backbone",
        "family": family,
    }


def export(view: StudyView, trial_ref: str | int, out_dir: Path | None = None) -> Path:
    """Write the trial's model with its labels and preprocessing to ``out_dir`` (replaced atomically)."""
    trial = view.trial(trial_ref)
    source = view.require_model(trial)
    out_dir = Path(out_dir or Path("exports") / view.name)
    model = evaluate.load_model(source)
    family, params = family_params(view, trial)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _copy(source, tmp / MODEL)
        _write(tmp / LABELS, json.dumps(view.classes, indent=1) + "\n")
        _write(tmp / PREPROCESSING, json.dumps(preprocessing_info(model, family), indent=1, ensure_ascii=False) + "\n")
        _write(tmp / "trial.json", json.dumps({"study": view.name, "trial": trial.number, "family": family,
                                               "params": params, "val_accuracy": trial.value}, indent=1) + "\n")
        write_checksums(tmp)
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        if out_dir.exists():
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# --- promote -----------------------------------------------------------------

def versions(base: Path) -> list[int]:
    if not base.is_dir():
        return []
    return sorted(int(m.group(1)) for p in base.iterdir() if p.is_dir() and (m := VERSION.match(p.name)))


def champion(base: Path) -> str | None:
    path = base / CHAMPION
    return path.read_text().strip() if path.is_file() else None


def set_champion(base: Path, version: str) -> None:
    if not (base / version / SUMS).is_file():
        raise ReportError(f"{base / version}: not a release; cannot make it champion")
    write_atomic(base / CHAMPION, version + "\n")


def _test_metrics(view: StudyView, trial_number: int, model_file: Path, sha: str, model, reports_dir: Path, data,
                  by_model: bool = False) -> dict:
    """TEST numbers from the report's saved predictions (or, if the report has not
    scored this model yet, scored now, once, and saved where the report looks).
    ``by_model``: a selection stage's file, whose predictions are keyed by its SHA-256."""
    root = data_root(view, data)
    check_data_unchanged(view, root)
    test = test_images(view, root)
    groups, groups_note = test_groups(view, test, root)
    report_dir = Path(reports_dir) / view.name
    pred = evaluate.test_predictions(model_file, sha, trial_number, test, root, view.classes, report_dir, model=model,
                                     groups=groups,
                                     path=evaluate.model_predictions_path(report_dir, sha) if by_model else None)
    low, high = evaluate.bootstrap_ci(pred.correct, pred.groups)
    calib = evaluate.calibration(pred.y_true, pred.probs)
    return {
        "split": "TEST", "images": int(len(pred.y_true)), "unusable_images": len(pred.skipped),
        "accuracy": scoring.accuracy(pred.y_true, pred.y_pred), "accuracy_ci95": [low, high],
        "macro_f1": evaluate.macro_f1(pred.y_true, pred.y_pred, len(view.classes)), "ece": calib.ece,
        "per_class": scoring.per_class(pred.y_true, pred.y_pred, view.classes),
        "test_fingerprint": pred.test_fingerprint, "predictions_file": str(pred.path),
        "bootstrap": {"samples": evaluate.BOOTSTRAP_SAMPLES, "seed": evaluate.BOOTSTRAP_SEED, "resampled": groups_note},
    }


def _model_card(name: str, version: str, metrics: dict, view: StudyView) -> str:
    val, test = metrics["validation"], metrics["test"]
    dataset = Path(view.attrs.get(keys.DATA_ROOT, "data")).name
    front = {
        "library_name": "keras",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "keras", "white-blood-cells", "hematology", "optuna", "hematune",
                 metrics["family"]],
        "datasets": [dataset],
        "metrics": ["accuracy", "f1"],
        "model-index": [{
            "name": f"{name}-{version}",
            "results": [{
                "task": {"type": "image-classification", "name": "White-blood-cell classification"},
                "dataset": {"name": dataset, "type": "imagefolder", "split": "TEST"},
                "metrics": [
                    {"type": "accuracy", "value": round(test["accuracy"], 4), "name": "TEST accuracy"},
                    {"type": "f1", "value": round(test["macro_f1"], 4), "name": "TEST macro-F1"},
                ],
            }, {
                "task": {"type": "image-classification", "name": "White-blood-cell classification"},
                "dataset": {"name": dataset, "type": "imagefolder", "split": val["split"]},
                "metrics": [{"type": "accuracy", "value": round(val["accuracy"], 4),
                             "name": f"{val['split']} accuracy"}],
            }],
        }],
    }
    per_class = "\n".join(f"| {c['class']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
                          for c in test["per_class"])
    params = "\n".join(f"  - `{k}`: {v}" for k, v in metrics["params"].items())
    low, high = test["accuracy_ci95"]
    training = metrics["training"]
    return _template("model_card.md").format(
        front_matter=yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), name=name, version=version,
        family=metrics["family"], class_count=len(metrics["labels"]), labels=", ".join(metrics["labels"]),
        study=metrics["study"], trial=metrics["trial"], train_images=metrics["data"]["train_images"],
        test_ece=test["ece"], data_root=view.attrs.get(keys.DATA_ROOT), data_fingerprint=metrics["data_fingerprint"],
        layout=view.attrs.get(keys.LAYOUT), split_rule=metrics["data"]["split_rule"],
        split_hash=metrics["data"]["split_hash"], param_count=metrics["param_count"],
        weights_origin=training.get("weights_origin"), training_run=_training_run(metrics), params=params,
        stage_section=_stage_section(metrics), val_split=val["split"], val_images=val["images"],
        val_accuracy_text=f"{val['accuracy']:.4f}" + (f" ± {val['sd']:.4f}" if val.get("sd") is not None else ""),
        val_note=val.get("kind") or "used to select this trial", test_images=test["images"],
        test_accuracy=test["accuracy"], low=low, high=high, test_macro_f1=test["macro_f1"], per_class=per_class)


def _training_run(metrics: dict) -> str:
    """The model card's line on how the model was trained: the trial's run, or a selection stage's models."""
    t = metrics["training"]
    run = (f"seed {t.get('seed')},\n  backend {t.get('backend')} on {t.get('device')}.")
    if "selection" not in metrics:
        return f"{t.get('epochs_trained')} epochs (best epoch {(t.get('best_epoch') or 0) + 1}), {run}"
    sel = metrics["selection"]
    return (f"{sel['epochs']} epochs per model, {sel['members']} model(s); the search trial {metrics['trial']} "
            f"whose configuration it is ran with {run}")


def _stage_section(metrics: dict) -> str:
    """The card's "Selection stage" section (templates/model_card_stage.md); nothing for a trial's release."""
    sel = metrics.get("selection")
    if not sel:
        return ""
    val = metrics["validation"]
    return _template("model_card_stage.md").format(
        stage=sel["stage"], stage_title=sel["title"], study=metrics["study"], stage_chosen=metrics["selected_by"],
        source_trial=metrics["trial"], family=metrics["family"], members=sel["members"], epochs=sel["epochs"],
        trained_on=sel["trained_on"], val_kind=val["kind"], folds=sel["folds"],
        val_score_text=f"{val['accuracy']:.4f}" + (f" ± {val['sd']:.4f}" if val.get("sd") is not None else ""),
        finalists=", ".join(str(x) for x in sel["finalists"]) or "—", winner=sel["winner"],
        recommended=sel["recommended"], model_file=sel["model_file"], model_sha=metrics["model_sha256"][:16])


def _template(name: str) -> str:
    """A text template shipped with the package (``reports/templates/``): prose a reader edits as Markdown,
    with ``str.format`` fields for the numbers."""
    return resources.files("reports").joinpath("templates", name).read_text(encoding="utf-8")


@dataclass
class Promoted:
    path: Path
    version: str
    champion: str


STAGE_TITLES = {"trial": "best trial as searched", "cv": "configuration chosen by cross-validation",
                "refit": "refit on all of TRAIN", "ensemble": "ensemble of the fold models",
                "ensemble-tta": "ensemble of the fold models with test-time augmentation"}


def _stage_trained_on(stage, folds) -> str:
    if stage.name == "trial":
        return "TRAIN less the search's group-validation split"
    if stage.name == "cv":
        return "TRAIN less the search's group-validation split (the trial's own model file)"
    if stage.members > 1:
        return f"TRAIN less one of {folds} folds each, so every TRAIN source cell trained some member"
    return "all of TRAIN (training and validation cells)"


def _stage_metrics(view: StudyView, stage_name: str, trial_ref, reports_dir: Path, data) -> tuple[Path, object, dict]:
    """(model file, loaded model, metrics) of a selection stage of `make select` (search/stages.py)."""
    from search.stages import STAGES, load_stages, stages_path

    if trial_ref is not None:
        raise ReportError(f"STAGE={stage_name} and TRIAL={trial_ref} together: promote either a trial (TRIAL=) or a "
                          "selection stage (STAGE=), not both")
    if stage_name not in STAGES:
        raise ReportError(f"STAGE={stage_name}: unknown stage; choose one of {', '.join(STAGES)}")
    stages, summary = load_stages(view.studies_dir, view.name)
    stage = next((s for s in stages if s.name == stage_name), None)
    if stage is None:
        raise ReportError(f"STAGE={stage_name}: {stages_path(view.studies_dir, view.name)} has no such stage; "
                          f"re-run `make select STUDY={view.name}`")
    if stage.val_score is None:
        raise ReportError(f"STAGE={stage_name}: {stages_path(view.studies_dir, view.name)} records no validation-side "
                          f"score for it; re-run `make select STUDY={view.name}`")
    source = Path(stage.model_path)
    if not source.is_file():
        raise ReportError(f"STAGE={stage_name}: its model file {source} is missing; re-run `make select STUDY={view.name}`")
    sha = sha256_file(source)
    model = evaluate.load_model(source)
    attrs = view.attrs
    ua = next((t.user_attrs for t in view.trials() if t.number == stage.source_trial), {})
    folds = summary.get("folds")
    recommended = str(summary.get("recommended") or "")
    train = sum((attrs.get(keys.TRAIN_COUNTS) or {}).values())
    val = sum((attrs.get(keys.VAL_COUNTS) or {}).values())
    metrics = {
        "study": view.name, "storage": view.storage_url, "trial": stage.source_trial, "stage": stage.name,
        "family": stage.family,
        "selected_by": f"STAGE={stage.name} of `make select`, "
                       + ("the stage it recommends" if stage.name == recommended else "named by hand"),
        "params": stage.params, "labels": view.classes, "param_count": int(model.count_params()), "model_sha256": sha,
        "data_fingerprint": attrs.get(keys.DATA_FINGERPRINT),
        "data": {"root": attrs.get(keys.DATA_ROOT), "split_rule": attrs.get(keys.SPLIT_RULE),
                 "split_hash": attrs.get(keys.SPLIT_HASH),
                 "train_images": train if stage.name in ("trial", "cv") else summary.get("train_images", train + val)},
        "validation": {"split": "group-validation" if stage.val_sd is None else f"group {folds}-fold cross-validation",
                       "accuracy": stage.val_score, "sd": stage.val_sd, "kind": stage.val_kind,
                       "images": val if stage.val_sd is None else summary.get("train_images", train + val)},
        "selection": {"stage": stage.name, "title": STAGE_TITLES.get(stage.name, stage.name), "members": stage.members,
                      "epochs": stage.epochs, "folds": folds, "trained_on": _stage_trained_on(stage, folds),
                      "finalists": [f.get("trial") for f in summary.get("finalists") or []],
                      "winner": summary.get("winner_trial"), "recommended": recommended, "model_file": str(source),
                      "stages_file": str(stages_path(view.studies_dir, view.name)), "summary": summary},
        "test": _test_metrics(view, stage.source_trial, source, sha, model, reports_dir, data, by_model=True),
        "training": {"epochs_trained": stage.epochs, "members": stage.members,
                     **{k: ua.get(k) for k in ("seed", "backend", "device", "weights_origin", "versions")}},
    }
    return source, model, metrics


def promote(view: StudyView, trial_ref: str | int | None = None, name: str | None = None,
            releases_dir: Path = Path("releases"), reports_dir: Path = OUT_DIR, make_champion: bool = False,
            data: str | None = None, stage: str | None = None) -> Promoted:
    """Promote a trial (``trial_ref``: best, the default, or a number) or a selection stage (``stage``: one of
    search.stages.STAGES) to ``releases_dir/<name>/v<N>/``."""
    from search.environment import git_commit

    name = name or view.name
    if not RELEASE_NAME.match(name):
        raise ReportError(f"NAME={name}: use letters, digits, '.', '_' or '-' only, at most 100 characters")
    if stage is not None:
        source, model, metrics = _stage_metrics(view, stage, trial_ref, reports_dir, data)
        metrics = {"release": name, **metrics, "hematune_commit": git_commit(),
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        return _write_release(view, name, source, model, metrics["family"], metrics, releases_dir, make_champion)
    trial_ref = "best" if trial_ref is None else trial_ref
    trial = view.trial(trial_ref)
    source = view.require_model(trial)
    sha = sha256_file(source)
    model = evaluate.load_model(source)
    family, params = family_params(view, trial)
    attrs, ua = view.attrs, trial.user_attrs
    metrics = {
        "release": name, "study": view.name, "storage": view.storage_url, "trial": trial.number, "family": family,
        "selected_by": "best group-validation accuracy" if str(trial_ref) == "best" else f"TRIAL={trial_ref} (by hand)",
        "params": params, "labels": view.classes, "param_count": ua.get("param_count"), "model_sha256": sha,
        "data_fingerprint": attrs.get(keys.DATA_FINGERPRINT),
        "data": {"root": attrs.get(keys.DATA_ROOT), "split_rule": attrs.get(keys.SPLIT_RULE),
                 "split_hash": attrs.get(keys.SPLIT_HASH), "train_images": sum((attrs.get(keys.TRAIN_COUNTS) or {}).values())},
        "validation": {"split": "group-validation", "accuracy": float(trial.value),
                       "images": sum((attrs.get(keys.VAL_COUNTS) or {}).values()), "loss": ua.get("best_val_loss")},
        "test": _test_metrics(view, trial.number, source, sha, model, reports_dir, data),
        "training": {k: ua.get(k) for k in ("seed", "epochs_trained", "best_epoch", "wall_seconds", "backend",
                                            "device", "weights_origin", "versions")},
        "hematune_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return _write_release(view, name, source, model, family, metrics, releases_dir, make_champion)


def _write_release(view: StudyView, name: str, source: Path, model, family: str, metrics: dict, releases_dir: Path,
                   make_champion: bool) -> Promoted:
    """Write the release folder atomically as the next version; move the champion pointer if asked (or first)."""
    base = Path(releases_dir) / name
    base.mkdir(parents=True, exist_ok=True)
    _sweep_stale(base)
    tmp = base / f".tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        _copy(source, tmp / MODEL)
        _write(tmp / LABELS, json.dumps(view.classes, indent=1) + "\n")
        _write(tmp / PREPROCESSING, json.dumps(preprocessing_info(model, family), indent=1, ensure_ascii=False) + "\n")
        while True:  # the version is fixed at rename time; a racing promote just takes the next number
            version = f"v{(versions(base) or [0])[-1] + 1}"
            metrics["version"] = version
            _write(tmp / METRICS, json.dumps(metrics, indent=1, default=str) + "\n")
            _write(tmp / CARD, _model_card(name, version, metrics, view))
            write_checksums(tmp)
            _fsync_dir(tmp)
            try:
                os.rename(tmp, base / version)
                break
            except OSError:
                if not (base / version).exists():
                    raise
        _fsync_dir(base)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    current = champion(base)
    if make_champion or current is None or not (base / current).is_dir():
        set_champion(base, version)
        current = version
    return Promoted(base / version, version, current)


# --- verify ------------------------------------------------------------------

@dataclass
class Release:
    path: Path
    model: keras.Model
    labels: list[str]
    preprocessing: dict
    metrics: dict


def resolve(path: str | os.PathLike) -> Path:
    """A version folder, or a release name folder (→ its champion)."""
    path = Path(path)
    if (path / SUMS).is_file():
        return path
    if not path.is_dir():
        raise ReportError(f"RELEASE={path}: no such release folder")
    current = champion(path)
    if current:
        if not (path / current / SUMS).is_file():
            raise ReportError(f"RELEASE={path}: champion points at {current}, which is not a release")
        return path / current
    found = versions(path)
    if found:
        raise ReportError(f"RELEASE={path}: no champion set; name a version, e.g. {path / f'v{found[-1]}'}")
    raise ReportError(f"RELEASE={path}: not a release (no {SUMS}); promote a trial first")


def _read_sums(folder: Path) -> dict[str, str]:
    sums = {}
    for number, line in enumerate((folder / SUMS).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        match = _SUM_LINE.match(line)
        if not match or "/" in match.group(2):
            raise ReportError(f"{folder / SUMS}: line {number} is not '<sha256>  <file>'")
        sums[match.group(2)] = match.group(1)
    return sums


def verify(path: str | os.PathLike) -> Release:
    """Check every checksum and that nothing is added or missing; load the model in safe mode."""
    folder = resolve(path)
    sums = _read_sums(folder)
    missing = [name for name in RELEASE_FILES if name not in sums]
    if missing:
        raise ReportError(f"{folder}: {SUMS} does not list {', '.join(missing)}; the release is incomplete")
    present = {p.name for p in folder.iterdir() if p.name != SUMS}
    extra = sorted(present - set(sums))
    if extra:
        raise ReportError(f"{folder}: {', '.join(extra)} not listed in {SUMS}; the release was modified")
    for name, expected in sums.items():
        file = folder / name
        if not file.is_file():
            raise ReportError(f"{folder}: {name} is listed in {SUMS} but missing")
        actual = sha256_file(file)
        if actual != expected:
            raise ReportError(f"{file}: checksum mismatch (sha256 {actual[:12]}… ≠ {expected[:12]}… in {SUMS}); "
                              "the release was modified or damaged")
    try:
        labels = json.loads((folder / LABELS).read_text())
        preprocessing = json.loads((folder / PREPROCESSING).read_text())
        metrics = json.loads((folder / METRICS).read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{folder}: a JSON file does not parse ({exc})") from None
    try:
        model = evaluate.load_model(folder / MODEL)
    except Exception as exc:  # noqa: BLE001 - any load failure means the release is unusable
        raise ReportError(f"{folder / MODEL}: does not load in Keras safe mode ({first_line(exc, 200)})") from None
    if int(model.output_shape[-1]) != len(labels):
        raise ReportError(f"{folder}: model has {model.output_shape[-1]} outputs but {LABELS} names {len(labels)} classes")
    if evaluate.input_size(model) != int(preprocessing.get("image_size", -1)):
        raise ReportError(f"{folder}: model input {evaluate.input_size(model)} px ≠ preprocessing image_size "
                          f"{preprocessing.get('image_size')}")
    return Release(folder, model, labels, preprocessing, metrics)
