"""Section 5 — CPU inference: latency at batch 1 and throughput at a larger batch.

Measured for the promoted model (a release's ``model.keras``, loaded the way
``hematune predict`` loads it) and for each family's best: the best trial with
a kept model file in any study of ``studies/hematune.db`` or the bench's
storage. A family that no study has trained is measured as its architecture
built with random weights at the family's builder defaults — latency does not
depend on the weight values — and the report says so.
"""
from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
import optuna
from optuna.trial import TrialState

from bench.common import Paths, loadavg, spread
from bench.settings import OVERHEAD_PARAMS, Settings
from models.registry import build_model
from reports import evaluate
from search import keys
from search.layout import model_path
from search.storage import default_storage


def throughput(model: keras.Model, batch: int, reps: int, warmup: int = 2) -> dict:
    """Images per second of ``predict_on_batch`` on ``batch`` images (CPU), per repetition."""
    size = evaluate.input_size(model)
    images = np.random.default_rng(0).integers(0, 256, size=(batch, size, size, 3)).astype("float32")
    rates = []
    with keras.device("cpu:0"):
        for _ in range(warmup):
            model.predict_on_batch(images)
        for _ in range(reps):
            start = time.perf_counter()
            model.predict_on_batch(images)
            rates.append(batch / (time.perf_counter() - start))
    return {"batch": batch, **spread(rates)}


def measure(model: keras.Model, settings: Settings) -> dict:
    latency = evaluate.measure_latency(model, repetitions=settings.latency_reps)
    return {"image_size": evaluate.input_size(model), "params": int(model.count_params()),
            "latency_ms": {"median": latency.median_ms, "p25": latency.p25_ms, "p75": latency.p75_ms,
                           "n": latency.repetitions},
            "throughput": throughput(model, settings.throughput_batch, settings.throughput_reps)}


def family_bests(url: str, studies_dir: Path, only: str | None = None) -> dict[str, dict]:
    """family → the best completed trial that kept a model file, over the studies in ``url`` (or just ``only``)."""
    best: dict[str, dict] = {}
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return best
    for name in optuna.get_all_study_names(url):
        if only and name != only:
            continue
        study = optuna.load_study(study_name=name, storage=url)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            family = trial.user_attrs.get(keys.FAMILY)
            path = model_path(studies_dir, name, trial.number)
            if family and trial.value is not None and path.is_file() and \
                    trial.value > best.get(family, {}).get("val_accuracy", -1):
                best[family] = {"study": name, "trial": trial.number, "val_accuracy": trial.value,
                                "model_file": str(path), "storage": url}
    return best


def run(settings: Settings, paths: Paths, promoted: dict | None) -> dict:
    out = {"loadavg_before": loadavg(), "rows": []}
    if promoted and promoted.get("model_file"):
        model = evaluate.load_model(Path(promoted["model_file"]))
        release = Path(promoted["release"])
        release = release.relative_to(Path.cwd()) if release.is_relative_to(Path.cwd()) else release
        out["rows"].append({"name": "promoted model", "source": f"release `{release}` (study "
                            f"{promoted['study']}, trial {promoted['trial']})", "trained": True, **measure(model, settings)})
        keras.backend.clear_session()
    # the user's studies; the bench's own studies only for its stand-in default search (section 4), never
    # its subsample or leaky-split studies, whose validation numbers are not comparable
    bests = family_bests(default_storage("studies"), Path("studies"))
    for family, row in family_bests(paths.storage, paths.studies, only="default-cpu").items():
        bests.setdefault(family, row)
    for family in settings.families:
        if family in bests:
            b = bests[family]
            model = evaluate.load_model(Path(b["model_file"]))
            row = {"name": f"{family} best", "trained": True, "source": f"study {b['study']} trial {b['trial']} "
                   f"(group-val {b['val_accuracy']:.4f})"}
        else:
            size = OVERHEAD_PARAMS["image_size"] if family == "cnn" else settings.family_image_size
            params = dict(OVERHEAD_PARAMS) if family == "cnn" else {"head_units": 128, "head_dropout": 0.2}
            model = build_model(family, params, num_classes=4, image_size=size, weights="none").model
            row = {"name": f"{family} (architecture)", "trained": False,
                   "source": f"no trained {family} model in any study: {model.name} at {size} px, random weights"}
        row.update(measure(model, settings))
        out["rows"].append(row)
        del model
        keras.backend.clear_session()
    return out
