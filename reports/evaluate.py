"""Score a model on TEST, once, and keep its predictions; the metrics a report states.

TEST predictions are saved per model (``predictions-trial-N.npz`` for a
trial's model file, ``predictions-model-<sha256 prefix>.npz`` for a selection
stage's; each keyed by the model file's SHA-256 and the TEST fingerprint), so
re-running a report or promoting the trial or stage re-uses them instead of
looking at TEST again, and anyone can recompute every number in the report
from that file.

Metrics: accuracy with a percentile-bootstrap 95 % interval that resamples
TEST *source groups*, not files: the reference TEST set's 2,487 files are
augmented copies of 71 source cells, and copies of one cell are right or wrong
together, so resampling files would give an interval several times too narrow;
macro-F1 (classes are balanced in files but not in source cells), per-class
precision/recall/F1, expected calibration error (10 equal-width confidence
bins) and CPU latency at batch 1 (median and inter-quartile range). Per-class
metrics, the confusion matrix and the timing loop are `search.metrics`, which
the dashboard's trial annotations use too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import f1_score

from data_pipeline.cache import load_or_decode
from data_pipeline.files import replacing
from data_pipeline.ingest import ImageSet, fingerprint
from search.metrics import single_image_times_ms

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
ECE_BINS = 10


def load_model(path: Path) -> keras.Model:
    """Load a saved model the way a user's machine would: safe mode, no optimizer."""
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def input_size(model: keras.Model) -> int:
    return int(model.input_shape[1])


def predict_probs(model: keras.Model, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Softmax outputs for uint8 images, batch by batch (pixels may be a memmap)."""
    out = []
    for start in range(0, len(pixels), batch_size):
        batch = np.asarray(pixels[start:start + batch_size], dtype="float32")
        out.append(np.asarray(keras.ops.convert_to_numpy(model(batch, training=False)), dtype="float32"))
    if not out:
        return np.zeros((0, int(model.output_shape[-1])), dtype="float32")
    return np.concatenate(out)


# --- TEST predictions, saved once per model ----------------------------------

@dataclass
class Predictions:
    files: np.ndarray  # (N,) str, relative to the data root
    y_true: np.ndarray  # (N,) int
    probs: np.ndarray  # (N, K) float32
    classes: list[str]
    trial: int
    model_sha256: str
    test_fingerprint: str
    skipped: dict[str, str]  # unusable TEST files -> why (not scored)
    groups: np.ndarray | None = None  # (N,) str source group of each file (the study's grouping rule)
    path: Path | None = None
    reused: bool = False

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return (self.y_pred == self.y_true).astype("float64")


def predictions_path(report_dir: Path, trial_number: int) -> Path:
    return Path(report_dir) / f"predictions-trial-{trial_number}.npz"


def model_predictions_path(report_dir: Path, model_sha256: str) -> Path:
    """Where a selection stage's TEST predictions live: keyed by its model file's content, not a trial,
    since a stage model (refit, ensemble…) has no trial number of its own and two stages may share one file."""
    return Path(report_dir) / f"predictions-model-{model_sha256[:16]}.npz"


def save_predictions(pred: Predictions, path: Path) -> None:
    """Atomic write: a crash never leaves a half file that a later report would trust."""
    with replacing(path) as tmp:
        np.savez_compressed(
            tmp, files=pred.files.astype(str), y_true=pred.y_true, probs=pred.probs, classes=np.asarray(pred.classes),
            trial=pred.trial, model_sha256=pred.model_sha256, test_fingerprint=pred.test_fingerprint,
            skipped_files=np.asarray(list(pred.skipped), dtype=str),
            skipped_reasons=np.asarray(list(pred.skipped.values()), dtype=str),
            groups=np.asarray(pred.groups if pred.groups is not None else pred.files, dtype=str),
        )
    pred.path = path


def load_predictions(path: Path) -> Predictions:
    with np.load(path, allow_pickle=False) as data:
        return Predictions(
            files=data["files"], y_true=data["y_true"].astype(int), probs=data["probs"],
            classes=[str(c) for c in data["classes"]], trial=int(data["trial"]),
            model_sha256=str(data["model_sha256"]), test_fingerprint=str(data["test_fingerprint"]),
            skipped=dict(zip((str(f) for f in data["skipped_files"]), (str(r) for r in data["skipped_reasons"]))),
            groups=data["groups"] if "groups" in data.files else None, path=Path(path), reused=True,
        )


def test_predictions(model_file: Path, model_sha256: str, trial_number: int, test: ImageSet, root: Path,
                     classes: list[str], report_dir: Path, model: keras.Model | None = None,
                     groups: list[str] | None = None, path: Path | None = None) -> Predictions:
    """The model's TEST predictions: the saved ones if they belong to this exact
    model file and TEST set, else computed now (the one read of TEST) and saved.

    ``path``: where they are saved (default: the trial's ``predictions_path``;
    a selection stage passes ``model_predictions_path``)."""
    test_fp = fingerprint(test, root)
    path = Path(path) if path is not None else predictions_path(report_dir, trial_number)
    if path.is_file():
        try:
            saved = load_predictions(path)
        except (OSError, ValueError, KeyError):
            saved = None
        if saved and saved.model_sha256 == model_sha256 and saved.test_fingerprint == test_fp \
                and saved.groups is not None:
            return saved
    model = model or load_model(model_file)
    decoded = load_or_decode(test, input_size(model))
    pixels, labels = decoded.usable_arrays()
    probs = predict_probs(model, pixels)
    files = np.asarray([os.path.relpath(f, root) for f, ok in zip(test.files, decoded.usable) if ok], dtype=str)
    kept = np.asarray(groups if groups is not None else [str(f) for f in test.files], dtype=str)[decoded.usable]
    pred = Predictions(files, np.asarray(labels, dtype=int), probs, list(classes), trial_number, model_sha256,
                       test_fp, dict(decoded.problems), kept)
    save_predictions(pred, path)
    return pred


# --- metrics ---------------------------------------------------------------

def bootstrap_ci(correct: np.ndarray, groups: np.ndarray | None = None, samples: int = BOOTSTRAP_SAMPLES,
                 seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy, resampling whole groups.

    ``correct`` is 0/1 per image; ``groups`` names each image's source group
    (None: every image its own group). Each resample draws as many groups as
    there are, with replacement, and scores all images of the drawn groups.
    """
    correct = np.asarray(correct, dtype="float64")
    if len(correct) == 0:
        return float("nan"), float("nan")
    ids = np.arange(len(correct)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    right = np.bincount(ids, weights=correct)  # per group: images right…
    size = np.bincount(ids).astype("float64")  # …and images in it
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for start in range(0, samples, 250):  # chunks keep memory small on large TEST sets
        stop = min(samples, start + 250)
        draw = rng.integers(0, len(size), size=(stop - start, len(size)))
        means[start:stop] = right[draw].sum(axis=1) / size[draw].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    return float(f1_score(y_true, y_pred, labels=list(range(num_classes)), average="macro", zero_division=0))


@dataclass
class Calibration:
    ece: float
    bins: list[dict]  # low, high, count, confidence, accuracy


def calibration(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> Calibration:
    """Expected calibration error: the count-weighted gap between confidence and
    accuracy over equal-width bins of the top-1 confidence."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        conf = float(confidence[mask].mean()) if count else float("nan")
        acc = float(correct[mask].mean()) if count else float("nan")
        if count:
            ece += count / len(y_true) * abs(acc - conf)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                      "confidence": conf, "accuracy": acc})
    return Calibration(float(ece), table)


@dataclass
class Latency:
    median_ms: float
    p25_ms: float
    p75_ms: float
    repetitions: int


def measure_latency(model: keras.Model, repetitions: int = 20, warmup: int = 3, seed: int = 0) -> Latency:
    """Wall time of one single-image prediction on the CPU (compiled predict
    function, after warm-up calls so tracing/compilation is not counted)."""
    size = input_size(model)
    image = np.random.default_rng(seed).integers(0, 256, size=(1, size, size, 3)).astype("float32")
    with keras.device("cpu:0"):
        times = single_image_times_ms(model, image, repetitions, warmup)
    p25, median, p75 = np.percentile(times, [25, 50, 75])
    return Latency(float(median), float(p25), float(p75), repetitions)
