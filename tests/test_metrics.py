"""search.metrics: the one scoring behind the dashboard's trial notes and the reports."""
from __future__ import annotations

import numpy as np
from PIL import Image

from search import metrics
from search.annotate import class_metrics


def test_per_class_and_confusion_count_every_class():
    y_true, y_pred = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    rows = metrics.per_class(y_true, y_pred, ["a", "b", "c"])
    assert [r["support"] for r in rows] == [2, 2, 1]
    assert rows[2] == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # never predicted
    assert metrics.confusion(y_true, y_pred, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert metrics.accuracy(y_true, y_pred) == 0.6


def test_the_dashboard_scores_as_the_report_does():
    y_true, y_pred = np.array([0, 1, 1, 2, 2, 2]), np.array([0, 1, 2, 2, 2, 0])
    note = class_metrics(y_true, y_pred, ["a", "b", "c"])
    report = metrics.per_class(y_true, y_pred, ["a", "b", "c"])
    assert [note["per_class"][r["class"]]["f1"] for r in report] == [round(r["f1"], 4) for r in report]
    assert note["confusion_matrix"] == metrics.confusion(y_true, y_pred, 3).tolist()


def test_confusion_png_is_an_image(tmp_path):
    path = metrics.confusion_png([[3, 1], [0, 4]], ["a", "b"], tmp_path / "sub" / "cm.png", "title")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100
