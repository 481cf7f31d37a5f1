"""Report, export, promote, verify and predict on a tiny real study made here.

The study is real (two trials of the from-scratch CNN on synthetic cells,
trained for two epochs), made once for the module. Which files are opened is
recorded with an audit hook, to show TEST is read by the report and by
nothing before it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import optuna
import pytest
import yaml
from sklearn.metrics import f1_score, precision_recall_fscore_support

from data_pipeline.cache import decode_image
from reports import evaluate, release
from reports.errors import ReportError
from reports.predict import predict
from reports.report import ReportOptions, build_report, fastest_within, pareto_front
from reports.study import load
from search.cli import main
from search.runner import SearchConfig, run_search
from tests.audit import OpenedPaths
from tests.conftest import make_class_folder
from tests.worker_tools import tiny_dataset

STUDY = "tiny"
OPENS_ONLY = ("open",)  # which files are read; listing TEST's class folders is not reading it


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny-study")
    root = tiny_dataset(base / "cells")
    patch = pytest.MonkeyPatch()
    patch.setenv("HEMATUNE_CACHE", str(base / "search-cache"))
    try:
        with OpenedPaths(OPENS_ONLY) as search_files:
            run_search(SearchConfig(data=str(root), model="cnn", study=STUDY, studies_dir=base / "studies", trials=2,
                                    max_epochs=2, fixed={"image_size": 32, "blocks": 2}, pruner="none"))
        reports = base / "reports"
        with OpenedPaths(OPENS_ONLY) as report_files:
            result = build_report(ReportOptions(study=STUDY, studies_dir=base / "studies", out_dir=reports,
                                                latency_reps=5))
    finally:
        patch.undo()
    return SimpleNamespace(root=root, test_dir=root / "TEST", studies=base / "studies", reports=reports,
                           report=result, search_files=search_files, report_files=report_files)


def _view(tiny):
    return load(STUDY, studies_dir=tiny.studies)


def test_test_is_read_by_the_report_only(tiny):
    assert tiny.search_files.under(tiny.root / "TRAIN"), "the recorder saw the search read its images"
    assert tiny.search_files.under(tiny.test_dir) == []
    read = tiny.report_files.under(tiny.test_dir)
    assert len(set(read)) == 18  # every TEST image, by the report
    text = tiny.report.path.read_text()
    assert "was never read by the search" in text and "evaluated only for this report" in text


def test_report_has_every_section_and_figure(tiny):
    text = tiny.report.path.read_text()
    for heading in ("## Summary", "## Comparison", "## Best model: trial", "### Per-class metrics (TEST)",
                    "### Confusion matrix (TEST)", "### Calibration (TEST)", "### Validation → TEST gap",
                    "### Optimization history", "### Parameter importances", "## Accuracy vs latency",
                    "## Reproducibility", "## About TEST"):
        assert heading in text, heading
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    names = {Path(i).name for i in images}
    expected = {"confusion-matrix.png", "reliability.png", "optimization-history.png", "pareto.png"}
    # two tiny trials may tie; importances then cannot be computed and the report must say why
    importances = text.split("### Parameter importances")[1].split("##")[0]
    if len({t.value for t in _view(tiny).completed()}) > 1:
        expected.add("param-importances.png")
    else:
        assert "Not available: every completed trial has the same validation accuracy" in importances
    assert names == expected
    for image in images:
        path = tiny.report.path.parent / image
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image
    for needle in ("fingerprint `", "split hash", "2 complete, 0 pruned, 0 failed, 0 running", "git commit",
                   "backend tensorflow" if keras.backend.backend() == "tensorflow" else "backend"):
        assert needle in text, needle


def _ece(y, probs, bins=10):
    conf, correct = probs.max(1), probs.argmax(1) == y
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        mask = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if mask.any():
            total += mask.sum() / len(y) * abs(correct[mask].mean() - conf[mask].mean())
    return total


def test_report_numbers_match_the_saved_predictions(tiny):
    text = tiny.report.path.read_text()
    view = _view(tiny)
    files = sorted(tiny.report.figures_dir.glob("predictions-trial-*.npz"))
    assert len(files) == 2  # both trials kept a model: both scored on TEST
    for path in files:
        with np.load(path) as saved:
            y, probs, rel = saved["y_true"], saved["probs"], [str(f) for f in saved["files"]]
            groups = [str(g) for g in saved["groups"]]
            trial_number = int(saved["trial"])
        # the predictions are TEST's, with TEST's labels…
        assert sorted(rel) == sorted(str(p.relative_to(tiny.root)) for p in tiny.test_dir.rglob("*.png"))
        assert all(r.split(os.sep)[1] == f"class{label}" for r, label in zip(rel, y))
        # …made by the trial's own model
        model = keras.saving.load_model(view.model_file(view.trial(trial_number)), safe_mode=True)
        own = model.predict(np.stack([decode_image(tiny.root / r, 32) for r in rel]), verbose=0)
        np.testing.assert_allclose(own, probs, atol=1e-5)
        # and every number in the table row is recomputed from them
        pred = probs.argmax(1)
        acc = float((pred == y).mean())
        # TEST files are copies of source cells: the interval resamples the 6 source groups
        assert groups == [f"class{label}/{Path(r).name.split('_')[1]}" for r, label in zip(rel, y)]
        assert len(set(groups)) == 6
        low, high = evaluate.bootstrap_ci((pred == y).astype(float), np.asarray(groups))
        f1 = f1_score(y, pred, average="macro", labels=[0, 1, 2], zero_division=0)
        val = view.trial(trial_number).value
        row = next(line for line in text.splitlines() if re.match(rf"^\| {trial_number}( ★)? \| cnn \|", line))
        assert f"| {100 * val:.1f} | {100 * acc:.1f} [{100 * low:.1f}, {100 * high:.1f}] | {f1:.3f} |" in row
        assert low <= acc <= high
    best = view.trial("best")
    with np.load(tiny.report.figures_dir / f"predictions-trial-{best.number}.npz") as saved:
        y, probs = saved["y_true"], saved["probs"]
    assert f"Expected calibration error: **{_ece(y, probs):.3f}**" in text
    p, r, f, n = precision_recall_fscore_support(y, probs.argmax(1), labels=[0, 1, 2], zero_division=0)
    for k in range(3):
        assert f"| class{k} | {p[k]:.3f} | {r[k]:.3f} | {f[k]:.3f} | {n[k]} |" in text
    gap = 100 * (best.value - float((probs.argmax(1) == y).mean()))
    assert f"gap **{gap:+.1f} points**" in text
    assert ("exceeds 3 points" in text) == (round(gap, 1) > 3)


def test_second_report_reuses_test_predictions(tiny, tmp_path, monkeypatch):
    from data_pipeline import cache

    out = tmp_path / "again"
    shutil.copytree(tiny.report.figures_dir, out / STUDY)  # the saved predictions of the first run
    # saved predictions are matched to TEST by content; the first report memoised TEST's file hashes in its
    # cache folder, so a second report there (a new process: nothing in memory) opens no TEST file
    monkeypatch.setenv("HEMATUNE_CACHE", str(tiny.root.parent / "search-cache"))
    monkeypatch.setattr(cache, "_MEMOS", {})
    with OpenedPaths(OPENS_ONLY) as files:
        build_report(ReportOptions(study=STUDY, studies_dir=tiny.studies, out_dir=out, latency_reps=3))
    assert files.under(tiny.test_dir) == []
    assert "Re-used saved predictions" in (out / f"{STUDY}.md").read_text()


def test_report_on_a_running_study(tiny, tmp_path):
    studies = tmp_path / "studies"
    shutil.copytree(tiny.studies, studies)
    storage = optuna.storages.RDBStorage(f"sqlite:///{studies / 'hematune.db'}")
    optuna.load_study(study_name=STUDY, storage=storage).ask()  # a trial left running (live or killed)
    build_report(ReportOptions(study=STUDY, studies_dir=studies, out_dir=tmp_path / "r", latency_reps=3))
    text = (tmp_path / "r" / f"{STUDY}.md").read_text()
    assert "still running or was interrupted (1 trial(s) running)" in text
    assert "2 complete, 0 pruned, 0 failed, 1 running" in text


def test_unknown_study_is_one_line_error(tiny, capsys):
    assert main(["report", "--study", "nope", "--studies-dir", str(tiny.studies)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hematune: error: STUDY=nope: not in") and f"studies there: {STUDY}" in err
    assert len(err.strip().splitlines()) == 1


def test_export_loads_with_labels_and_preprocessing(tiny, tmp_path):
    out = release.export(_view(tiny), "best", tmp_path / "export")
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    assert json.loads((out / "labels.json").read_text()) == ["class0", "class1", "class2"]
    pre = json.loads((out / "preprocessing.json").read_text())
    assert pre["image_size"] == model.input_shape[1] == 32
    assert pre["scaling_inside_model"][0]["scale"] == pytest.approx(1 / 255)


def _promote(tiny, releases, **kwargs):
    return release.promote(_view(tiny), releases_dir=releases, reports_dir=tiny.reports, **kwargs)


def test_promote_twice_gives_v1_and_v2_and_champion_moves_only_when_asked(tiny, tmp_path):
    releases = tmp_path / "releases"
    first = _promote(tiny, releases)
    second = _promote(tiny, releases, trial_ref="best")
    assert (first.version, second.version) == ("v1", "v2")
    assert (releases / STUDY / "champion").read_text().strip() == "v1"
    assert release.versions(releases / STUDY) == [1, 2]
    third = _promote(tiny, releases, make_champion=True)
    assert third.version == "v3" and (releases / STUDY / "champion").read_text().strip() == "v3"

    folder = first.path
    assert sorted(p.name for p in folder.iterdir()) == sorted(release.RELEASE_FILES + (release.SUMS,))
    metrics = json.loads((folder / "metrics.json").read_text())
    best = _view(tiny).trial("best")
    assert metrics["trial"] == best.number and metrics["validation"]["accuracy"] == best.value
    assert metrics["validation"]["split"] == "group-validation" and metrics["test"]["split"] == "TEST"
    with np.load(tiny.report.figures_dir / f"predictions-trial-{best.number}.npz") as saved:
        acc = float((saved["probs"].argmax(1) == saved["y_true"]).mean())
    assert metrics["test"]["accuracy"] == pytest.approx(acc)
    assert metrics["data_fingerprint"] == _view(tiny).attrs["data_fingerprint"]

    card = (folder / "MODEL_CARD.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "keras" and "white-blood-cells" in front["tags"]
    splits = [r["dataset"]["split"] for r in front["model-index"][0]["results"]]
    assert splits == ["TEST", "group-validation"]
    for section in ("## Intended use", "## Limitations", "## Data", "## Training", "## Evaluation"):
        assert section in card
    assert "not a diagnostic device" in card
    assert release.verify(releases / STUDY).path == third.path  # the name folder resolves to the champion


def test_tampered_release_fails_verify(tiny, tmp_path, capsys):
    releases = tmp_path / "releases"
    good = _promote(tiny, releases).path
    assert release.verify(good).labels == ["class0", "class1", "class2"]

    def tampered(change) -> Path:
        copy = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(good, copy)
        change(copy)
        return copy

    edited = tampered(lambda d: (d / "labels.json").write_text('["class1", "class0", "class2"]\n'))
    with pytest.raises(ReportError, match="labels.json: checksum mismatch"):
        release.verify(edited)
    def flip_one_byte(folder: Path) -> None:
        data = bytearray((folder / "model.keras").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / "model.keras").write_bytes(bytes(data))

    flipped = tampered(flip_one_byte)
    with pytest.raises(ReportError, match="model.keras: checksum mismatch"):
        release.verify(flipped)
    with pytest.raises(ReportError, match="extra.py not listed"):
        release.verify(tampered(lambda d: (d / "extra.py").write_text("import os\n")))
    with pytest.raises(ReportError, match="model.keras is listed in SHA256SUMS but missing"):
        release.verify(tampered(lambda d: (d / "model.keras").unlink()))

    assert main(["verify", str(edited)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hematune: error:") and "checksum mismatch" in err and len(err.strip().splitlines()) == 1
    assert main(["predict", "--release", str(edited), str(tiny.test_dir)]) == 2  # no prediction from a bad release
    assert "checksum mismatch" in capsys.readouterr().err


def test_killed_promote_leaves_no_half_release(tiny, tmp_path):
    releases = tmp_path / "releases"
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from reports import release
        from reports.study import load

        def die(folder):  # everything but the checksums is written: kill -9 now
            os.kill(os.getpid(), signal.SIGKILL)

        release.write_checksums = die
        release.promote(load({STUDY!r}, studies_dir=Path({str(tiny.studies)!r})),
                        releases_dir=Path({str(releases)!r}), reports_dir=Path({str(tiny.reports)!r}))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    base = releases / STUDY
    leftovers = [p.name for p in base.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-")  # the half-written folder, hidden
    assert release.versions(base) == [] and not (base / "champion").exists()
    with pytest.raises(ReportError, match="not a release"):
        release.verify(base)

    after = _promote(tiny, releases)  # the next promote starts at v1 and sweeps the dead one's folder
    assert after.version == "v1" and sorted(p.name for p in base.iterdir()) == ["champion", "v1"]
    release.verify(after.path)


def test_predict_matches_the_models_own_predictions(tiny, tmp_path, capsys):
    folder = tmp_path / "inbox"
    folder.mkdir()
    images = sorted(tiny.test_dir.rglob("*.png"))[::3]
    for i, image in enumerate(images):
        shutil.copy(image, folder / f"img{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("hello")
    rel = _promote(tiny, tmp_path / "releases").path

    rows = predict(rel, [str(folder)])
    assert len(rows) == len(images) + 2
    bad = {Path(r.file).name: r.error for r in rows if r.error}
    assert set(bad) == {"broken.jpg", "notes.txt"} and "unreadable image" in bad["broken.jpg"]

    model = keras.saving.load_model(rel / "model.keras", safe_mode=True)
    good = sorted(folder.glob("img*.png"))
    own = model.predict(np.stack([decode_image(p, 32) for p in good]), verbose=0)
    by_file = {Path(r.file).name: r for r in rows}
    labels = ["class0", "class1", "class2"]
    for path, p in zip(good, own):
        row = by_file[path.name]
        assert row.label == labels[int(p.argmax())]
        assert row.confidence == pytest.approx(float(p.max()), abs=1e-5)
        assert [c for c, _ in row.top3] == [labels[k] for k in np.argsort(-p)[:3]]

    assert main(["predict", "--format", "json", "--release", str(rel), str(folder)]) == 1  # some files failed
    out = json.loads(capsys.readouterr().out)
    assert [Path(r["file"]).name for r in out] == sorted(p.name for p in folder.iterdir())
    assert {r["class"] for r in out if r["error"] is None} <= set(labels)
    assert main(["predict", "--format", "csv", "--release", str(rel), str(good[0])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "file,class,confidence,top3,error" and lines[1].startswith(f"{good[0]},")


def test_calibration_error_on_a_known_case():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    # bins: 0.9 → 2 right (acc 1, conf .9); 0.6 → wrong (acc 0, conf .6); 0.7 → right (acc 1, conf .7)
    expected = 0.5 * 0.1 + 0.25 * 0.6 + 0.25 * 0.3
    assert evaluate.calibration(y, probs).ece == pytest.approx(expected)


def test_pareto_front_and_fastest_within():
    points = [{"trial": 0, "val_accuracy": 0.90, "latency_ms": 10.0}, {"trial": 1, "val_accuracy": 0.80, "latency_ms": 2.0},
              {"trial": 2, "val_accuracy": 0.85, "latency_ms": 12.0}, {"trial": 3, "val_accuracy": 0.895, "latency_ms": 4.0}]
    assert pareto_front(points) == [1, 3, 0]
    assert fastest_within(points, 1.0)["trial"] == 3
    assert fastest_within(points, 0.0)["trial"] == 0


def test_bootstrap_resamples_source_groups():
    rng = np.random.default_rng(1)
    per_group = rng.integers(0, 2, size=40).astype(float)  # 40 source cells, each right or wrong as a whole
    correct = np.repeat(per_group, 25)  # 25 augmented copies of each
    groups = np.repeat([f"g{i}" for i in range(40)], 25)
    by_group = evaluate.bootstrap_ci(correct, groups)
    # equal-sized groups: exactly the bootstrap of the 40 cells
    assert by_group == evaluate.bootstrap_ci(per_group)
    by_file = evaluate.bootstrap_ci(correct)  # what treating 1,000 copies as independent would claim
    assert by_group[1] - by_group[0] > 3 * (by_file[1] - by_file[0])
    assert by_group[0] <= correct.mean() <= by_group[1]


def test_flat_layout_report_scores_the_files_the_split_set_aside(tmp_path, isolated_cache):
    root = tmp_path / "flat"
    for label in range(3):
        make_class_folder(root / f"class{label}", label, 6, 2)
    run_search(SearchConfig(data=str(root), model="cnn", study="flat", studies_dir=tmp_path / "studies", trials=1,
                            max_epochs=1, fixed={"image_size": 32, "blocks": 2}, pruner="none"))
    result = build_report(ReportOptions(study="flat", studies_dir=tmp_path / "studies", out_dir=tmp_path / "r",
                                        latency_reps=3))
    manifest = json.loads(Path(load("flat", studies_dir=tmp_path / "studies").attrs["split_manifest"]).read_text())
    with np.load(next(result.figures_dir.glob("predictions-trial-*.npz"))) as saved:
        scored = sorted(str(f) for f in saved["files"])
    assert scored == sorted(manifest["test"])
    assert not set(scored) & set(manifest["train"] + manifest["val"])
    assert "the files the split manifest set aside" in result.path.read_text()
