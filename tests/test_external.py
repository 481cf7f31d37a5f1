"""`hematune evaluate`: a release scored on another source's class folders (external validation).

The release is real: a one-trial CNN study on the tiny synthetic set, promoted.
The "other lab" folders are drawn by the same generator from other seeds and
source groups, with class folders named in other letter cases.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from reports.predict import predict
from search.cli import main
from tests.conftest import make_class_folder
from tests.worker_tools import tiny_releases

STUDY = "tiny-ext"
LAB_FOLDERS = ("CLASS0", "Class1", "class2")  # the release's classes are class0, class1, class2


@pytest.fixture(scope="module")
def rel(tmp_path_factory):
    base = tmp_path_factory.mktemp("external")
    root, (done,) = tiny_releases(base, STUDY, trials=1, max_epochs=2)
    return SimpleNamespace(path=done.path, root=root)


def other_lab(folder: Path, classes=(0, 1, 2), groups: int = 3, per_group: int = 2) -> list[Path]:
    """Class folders of another source: new seeds and groups (offset 300), folder names in other cases."""
    files = []
    for label in classes:
        files += make_class_folder(folder / LAB_FOLDERS[label], label, groups, per_group, group_offset=300)
    return files


def evaluate(rel, data: Path, out: Path, *extra: str) -> int:
    return main(["evaluate", "--release", str(rel.path), "--data", str(data), "--out", str(out), *extra])


def report_of(out: Path) -> tuple[str, dict, dict]:
    (md,) = out.glob("external-*.md")
    folder = md.with_suffix("")
    with np.load(folder / "predictions.npz") as saved:
        arrays = {k: saved[k] for k in saved.files}
    return md.read_text(), json.loads((folder / "summary.json").read_text()), arrays


def test_flat_folder_is_scored_whole_with_names_matched_ignoring_case(rel, tmp_path, capsys):
    files = other_lab(tmp_path / "lab")
    assert evaluate(rel, tmp_path / "lab", tmp_path / "out") == 0
    assert "external validation: 18 images of 3 classes" in capsys.readouterr().out
    text, summary, saved = report_of(tmp_path / "out")
    assert summary["images"] == len(files) == 18 and summary["layout"] == "flat"
    assert summary["class_folders"] == {"CLASS0": "class0", "Class1": "class1", "class2": "class2"}
    assert summary["groups"] == 9 and summary["groups_rule"].startswith("filename:")  # 3 classes × 3 source cells
    # every number is recomputable from the saved predictions, and they are what `hematune predict` answers
    y_pred = saved["probs"].argmax(axis=1)
    assert summary["accuracy"] == pytest.approx(float(np.mean(y_pred == saved["y_true"])))
    answered = {Path(r.file).relative_to(tmp_path / "lab").as_posix(): r.label for r in predict(rel.path, files)}
    assert [answered[f] for f in saved["files"]] == [summary["classes_present"][k] for k in y_pred]
    low, high = summary["accuracy_ci95"]
    assert low <= summary["accuracy"] <= high
    for heading in ("## Summary", "## Compared with the release's own TEST", "## Per-class metrics",
                    "## Confusion matrix", "## Calibration", "## What these numbers do and do not prove",
                    "## Provenance"):
        assert heading in text, heading
    assert "This is data the model never saw, from another source" in text
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (tmp_path / "out" / image).is_file(), image
    assert summary["release"] == str(rel.path) and summary["data_fingerprint"] in text


def test_a_class_the_release_lacks_is_refused_in_one_line(rel, tmp_path, capsys):
    other_lab(tmp_path / "lab")
    make_class_folder(tmp_path / "lab" / "basophil", 4, 2, 2)
    assert evaluate(rel, tmp_path / "lab", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("hematune: error: DATA=") and "basophil" in err and "class0, class1, class2" in err
    assert not (tmp_path / "out").exists()


def test_a_subset_of_the_classes_is_scored_over_those_classes(rel, tmp_path):
    other_lab(tmp_path / "lab", classes=(0, 2))
    assert evaluate(rel, tmp_path / "lab", tmp_path / "out") == 0
    text, summary, saved = report_of(tmp_path / "out")
    assert summary["classes_present"] == ["class0", "class2"] and summary["images"] == 12
    assert [c["class"] for c in summary["per_class"]] == ["class0", "class2"]
    assert set(saved["y_true"].tolist()) == {0, 2}
    y_pred = saved["probs"].argmax(axis=1)
    assert saved["probs"].shape == (12, 3)  # the model still chooses among all its classes
    assert summary["predicted_absent_class"] == int(np.sum(y_pred == 1))
    assert summary["macro_f1_over_classes_present"] == pytest.approx(np.mean([c["f1"] for c in summary["per_class"]]))
    per_class_rows = re.findall(r"^\| (class\d) \| [\d.]+ \| [\d.]+ \| [\d.]+ \| \d+ \|$", text, re.MULTILINE)
    confusion_rows = re.findall(r"^\| (class\d) \| \d+ \| \d+ \| \d+ \|$", text, re.MULTILINE)
    assert per_class_rows == confusion_rows == ["class0", "class2"]
    assert "Not in DATA: class1" in text


def test_train_test_layout_scores_test_only(rel, tmp_path):
    lab = tmp_path / "lab"
    other_lab(lab / "TRAIN")
    test_files = []
    for label, name in enumerate(LAB_FOLDERS):
        test_files += make_class_folder(lab / "TEST" / name, label, 2, 2, group_offset=500)
    assert evaluate(rel, lab, tmp_path / "out") == 0
    text, summary, saved = report_of(tmp_path / "out")
    assert summary["layout"] == "train_test" and summary["images"] == len(test_files) == 12
    assert summary["train_images_left_out"] == 18
    assert all(f.startswith("TEST/") for f in saved["files"])
    assert "the 18 TRAIN images were not scored" in text


def test_unreadable_images_are_skipped_counted_and_named(rel, tmp_path):
    other_lab(tmp_path / "lab")
    (tmp_path / "lab" / "Class1" / "_399_0.png").write_bytes(b"not a png at all")
    assert evaluate(rel, tmp_path / "lab", tmp_path / "out", "--groups", "none") == 0
    text, summary, _ = report_of(tmp_path / "out")
    assert summary["images"] == 18 and len(summary["unreadable"]) == 1
    assert "1 unreadable" in text and "## Unreadable images" in text and "_399_0.png" in text
    assert summary["groups"] == 18 and "the interval is too narrow" in text  # GROUPS=none: every file its own group


def test_the_releases_own_test_set_is_not_external(rel, tmp_path, capsys):
    own = tmp_path / "own"
    shutil.copytree(rel.root, own)  # the same files elsewhere: the same content fingerprint
    assert evaluate(rel, own, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TEST images release" in err and "another source" in err
