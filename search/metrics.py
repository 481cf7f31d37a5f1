"""How a classifier is scored, once for every caller: per-class metrics, the confusion matrix (and its PNG),
single-image latency.

The dashboard's trial annotations (`search.annotate`, on the group-validation
set, during the search) and the reports and releases (`reports.evaluate`, on
TEST, after it) both score with these, so a number on the dashboard and the
same number in a report are computed the same way. Keras-free at import: a
model is passed in; scikit-learn and matplotlib are imported when used.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else float("nan")


def per_class(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of each class (a class never predicted scores 0, not an error)."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, n = precision_recall_fscore_support(y_true, y_pred, labels=list(range(len(classes))), zero_division=0)
    return [{"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(n[i])}
            for i, c in enumerate(classes)]


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))


def confusion_png(matrix, classes: list[str], path: Path, title: str) -> Path:
    """The confusion matrix as a PNG: each cell's count and its share of the true class, shaded by that share.

    Drawn on a bare matplotlib ``Figure`` (no pyplot state), so it is safe in
    any thread and beside any other figure being drawn.
    """
    from matplotlib.figure import Figure

    counts = np.asarray(matrix)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig = Figure(figsize=(1.2 * n + 2.5, 1.1 * n + 2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(counts[i, j])}\n{shares[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), classes, rotation=30, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def single_image_times_ms(model, image: np.ndarray, repetitions: int, warmup: int) -> list[float]:
    """Wall time of each of ``repetitions`` one-image predictions, in ms, after ``warmup`` untimed calls (the
    first calls trace and compile the predict function). ``predict_on_batch`` is compiled and returns NumPy:
    what serving one image costs."""
    batch = np.asarray(image)[None, ...] if np.ndim(image) == 3 else np.asarray(image)
    for _ in range(warmup):
        model.predict_on_batch(batch)
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        model.predict_on_batch(batch)
        times.append((time.perf_counter() - start) * 1000)
    return times
