"""The report's "From trial to model" section and `promote --stage`, on a tiny real study made here.

The study is real (two trials of the from-scratch CNN on synthetic cells, one
epoch each). Its selection results are written here through
`search.stages.write_stages`, as `hematune select` writes them: the "trial"
and "cv" stages are the search's own trial model files, "refit" is a 16-px CNN,
"ensemble" two 16-px CNNs averaged by `models.ensemble.build_ensemble`, and
"ensemble-tta" that ensemble under `with_tta`. Those three are untrained (this
file tests the report and the release, not learning).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import yaml

from reports import evaluate, release
from reports import study as study_files
from reports.predict import predict
from reports.report import ReportOptions, build_report, evaluate_stages
from reports.report_markdown import stages_section
from reports.study import family_params, load, sha256_file
from search.cli import main
from search.layout import select_dir
from search.stages import STAGES, Stage, stages_path, write_stages
from tests.audit import OpenedPaths
from tests.worker_tools import tiny_study

STUDY = "tiny-select"
REPO = Path(__file__).resolve().parent.parent


def _cnn(params: dict, size: int, seed: int) -> keras.Model:
    from models.registry import build_model

    return build_model("cnn", {**params, "aug_strength": 0.0}, num_classes=3, image_size=size, weights="none",
                       seed=seed).model


def _write_selection(studies: Path) -> dict[str, Stage]:
    """stages.json for the study, with model files in its select folder (as `hematune select` leaves them)."""
    from models.ensemble import build_ensemble, with_tta

    view = load(STUDY, studies_dir=studies)
    best, other = view.completed()[:2]
    folder = select_dir(studies, STUDY)
    folder.mkdir(parents=True, exist_ok=True)
    family, params = family_params(view, other)
    small = {**params, "image_size": 16}
    members = [_cnn(small, 16, seed) for seed in (1, 2)]
    ensemble = build_ensemble(members)
    files = {"refit": folder / "refit.keras", "ensemble": folder / "ensemble.keras",
             "ensemble-tta": folder / "ensemble-tta.keras"}
    _cnn(small, 16, 0).save(files["refit"])
    ensemble.save(files["ensemble"])
    with_tta(ensemble).save(files["ensemble-tta"])
    keras.backend.clear_session()
    cv = dict(val_score=0.61, val_sd=0.05, val_kind=f"2-fold group CV mean of trial {other.number}'s configuration")
    best_family, best_params = family_params(view, best)
    stages = [
        Stage("trial", view.require_model(best), best.number, best_family, 32, best_params, float(best.value), None,
              f"trial {best.number}'s best-epoch accuracy on the search's group-validation split", 1, 1),
        Stage("cv", view.require_model(other), other.number, family, 32, params, members=1, epochs=1, **cv),
        Stage("refit", files["refit"], other.number, family, 16, small, members=1, epochs=2, **cv),
        Stage("ensemble", files["ensemble"], other.number, family, 16, small, members=2, epochs=2, **cv),
        Stage("ensemble-tta", files["ensemble-tta"], other.number, family, 16, small, members=2, epochs=2, **cv),
    ]
    summary = {"folds": 2, "parent_study": STUDY, "select_study": f"{STUDY}-select",
               "finalists": [{"trial": other.number, "search_value": float(other.value), "cv_mean": 0.61, "cv_sd": 0.05,
                              "fold_scores": [0.56, 0.66], "epochs": 1, "pruned": False, "pruned_reason": None},
                             {"trial": best.number, "search_value": float(best.value), "cv_mean": 0.5, "cv_sd": 0.0,
                              "fold_scores": [0.5, None], "epochs": 1, "pruned": True,
                              "pruned_reason": "fold 1 below the winner"}],
               "winner_trial": other.number, "recommended": "ensemble-tta", "split_rule": "filename (auto)",
               "fold_hash": "0123abcd", "fold_seed": 0, "data_fingerprint": "x", "train_images": 36,
               "wall_seconds": 12.5}
    write_stages(studies, STUDY, stages, summary)
    return {s.name: s for s in stages}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny-select")
    root, _ = tiny_study(base, STUDY, trials=2, max_epochs=1)
    patch = pytest.MonkeyPatch()
    patch.setenv("HEMATUNE_CACHE", str(base / "cache"))
    studies, reports = base / "studies", base / "reports"
    try:
        stages = _write_selection(studies)
        report = build_report(ReportOptions(study=STUDY, studies_dir=studies, out_dir=reports, latency_reps=2))
    finally:
        patch.undo()
    return SimpleNamespace(root=root, studies=studies, reports=reports, report=report, stages=stages, base=base)


def _stages_again(tiny, out_dir: Path, stage: str | None = None, studies: Path | None = None):
    """The report's stage rows computed again (what `build_report` does for the section), and the section's text."""
    view = load(STUDY, studies_dir=studies or tiny.studies)
    opts = ReportOptions(study=STUDY, studies_dir=studies or tiny.studies, out_dir=out_dir, latency_reps=1,
                         stage=stage)
    test = study_files.test_images(view, tiny.root)
    groups, note = study_files.test_groups(view, test, tiny.root)
    facts = evaluate_stages(view, opts, [], test, groups, tiny.root, out_dir / STUDY)
    text = "\n".join(stages_section(SimpleNamespace(view=view, stages=facts, opts=opts, groups_note=note)))
    return facts, text


def _section(text: str) -> str:
    return text.split("## From trial to model")[1].split("\n## ")[0]


def test_report_without_selection_says_how_to_add_it(tiny, tmp_path):
    bare = tmp_path / "studies"  # the same study with no selection results
    shutil.copytree(tiny.studies, bare, ignore=shutil.ignore_patterns("select"))
    facts, text = _stages_again(tiny, tmp_path / "out", studies=bare)
    assert facts is None
    assert "## From trial to model" in text and f"`make select STUDY={STUDY}`" in text and "| stage |" not in text


def test_report_has_one_row_per_stage_with_intervals_matching_the_saved_predictions(tiny):
    section = _section(tiny.report.path.read_text())
    table = section.split("| stage | validation-side")[1].split("\n\n")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    assert [r.split("|")[1].split()[0] for r in rows] == list(STAGES)
    assert "★" in rows[STAGES.index("ensemble-tta")]  # the recommended stage, not picked on TEST
    assert "61.0 ± 5.0" in rows[STAGES.index("refit")] and "2-fold group CV mean" in rows[STAGES.index("refit")]
    assert "× 2 |" in rows[STAGES.index("ensemble")]

    saved = tiny.report.summary["stages"]["rows"]
    assert [r["stage"] for r in saved] == list(STAGES)
    for row, line in zip(saved, rows):
        assert row["model_sha256"] == sha256_file(Path(row["model_file"]))
        path = evaluate.model_predictions_path(tiny.report.figures_dir, row["model_sha256"])
        assert row["predictions"] == str(path)
        pred = evaluate.load_predictions(path)
        assert pred.model_sha256 == row["model_sha256"] and len(pred.y_true) == 18
        accuracy = float((pred.y_pred == pred.y_true).mean())
        low, high = evaluate.bootstrap_ci(pred.correct, pred.groups)
        assert row["test_accuracy"] == pytest.approx(accuracy)
        assert row["test_ci"] == pytest.approx([low, high]) and low <= accuracy <= high
        assert row["ece"] == pytest.approx(evaluate.calibration(pred.y_true, pred.probs).ece)
        assert f"{100 * accuracy:.1f} [{100 * low:.1f}, {100 * high:.1f}]" in line
        assert row["latency_ms"] > 0 and row["param_count"] > 0
    assert saved[STAGES.index("ensemble")]["param_count"] > 2 * saved[STAGES.index("refit")]["param_count"] * 0.99

    chosen = saved[STAGES.index("ensemble-tta")]
    gap = round((0.61 - chosen["test_accuracy"]) * 100, 1)
    assert "### Validation → TEST gap of the chosen stage (ensemble-tta)" in section
    assert f"gap **{gap:+.1f} points**" in section
    finalists = section.split("### Cross-validated finalists")[1]
    assert "| 61.0 ± 5.0 | 56.0, 66.0 | 1 | no |" in finalists
    assert "| 50.0 ± 0.0 | 50.0, — | 1 | yes: fold 1 below the winner |" in finalists
    assert "fold assignment hash `0123abcd`" in section
    assert "Provenance" in section and "refit.keras" in section


def test_second_report_reuses_stage_predictions_without_opening_test(tiny, monkeypatch):
    monkeypatch.setenv("HEMATUNE_CACHE", str(tiny.base / "cache"))  # where the first report memoised TEST's hashes
    files = sorted(tiny.report.figures_dir.glob("predictions-model-*.npz"))
    assert len(files) == 5  # five distinct model files
    before = {f: f.stat().st_mtime_ns for f in files}
    found = {}
    with OpenedPaths(events=("open",)) as opened:
        found["facts"] = _stages_again(tiny, tiny.reports)[0]
    assert opened.under(tiny.root / "TEST") == []
    assert {f: f.stat().st_mtime_ns for f in files} == before
    assert all(r.predictions.reused for r in found["facts"].rows)
    saved = tiny.report.summary["stages"]["rows"]
    assert [r.test_accuracy for r in found["facts"].rows] == [r["test_accuracy"] for r in saved]


def test_report_stage_option_names_the_gap_stage(tiny, monkeypatch):
    monkeypatch.setenv("HEMATUNE_CACHE", str(tiny.base / "cache"))
    facts, text = _stages_again(tiny, tiny.reports, stage="refit")
    assert facts.chosen == "refit"
    assert "### Validation → TEST gap of the chosen stage (refit)" in text and "STAGE=refit (named by hand)" in text
    assert "| refit ★ (refit on all of TRAIN) |" in text


def _promote(tiny, releases: Path, stage: str):
    return release.promote(load(STUDY, studies_dir=tiny.studies), releases_dir=releases, reports_dir=tiny.reports,
                           stage=stage)


def test_promote_stage_ensemble_makes_a_release_that_verifies_and_names_the_stage(tiny, tmp_path, capsys):
    releases = tmp_path / "releases"
    done = _promote(tiny, releases, "ensemble")
    checked = release.verify(done.path)
    stage = tiny.stages["ensemble"]
    assert checked.metrics["stage"] == "ensemble" and checked.metrics["trial"] == stage.source_trial
    assert (done.path / "model.keras").read_bytes() == stage.model_path.read_bytes()
    assert checked.preprocessing["image_size"] == 16
    assert checked.preprocessing["scaling_inside_model"] == [{"layer": "scale_to_unit", "scale": pytest.approx(1 / 255),
                                                              "offset": 0.0}]
    saved = evaluate.load_predictions(evaluate.model_predictions_path(tiny.report.figures_dir,
                                                                      sha256_file(stage.model_path)))
    test = checked.metrics["test"]
    assert test["accuracy"] == pytest.approx(float((saved.y_pred == saved.y_true).mean()))
    assert test["accuracy_ci95"] == pytest.approx(list(evaluate.bootstrap_ci(saved.correct, saved.groups)))
    assert checked.metrics["validation"] == {"split": "group 2-fold cross-validation", "accuracy": 0.61, "sd": 0.05,
                                             "kind": stage.val_kind, "images": 36}

    card = (done.path / "MODEL_CARD.md").read_text()
    assert "## Selection stage: `ensemble` (ensemble of the fold models)" in card
    assert "`make promote STAGE=ensemble` (STAGE=ensemble of `make select`, named by hand)" in card
    assert f"trial {stage.source_trial}'s (family `cnn`); 2 model(s)" in card and "2 epochs" in card
    assert f"**0.6100 ± 0.0500** — {stage.val_kind}" in card
    assert "| group 2-fold cross-validation | 36 | 0.6100 ± 0.0500 |" in card
    front = yaml.safe_load(card.split("---")[1])
    assert [r["dataset"]["split"] for r in front["model-index"][0]["results"]] == ["TEST",
                                                                                    "group 2-fold cross-validation"]
    assert main(["verify", str(done.path)]) == 0
    assert "stage ensemble, trial" in capsys.readouterr().out


def test_an_ensemble_tta_release_predicts_and_serves(tiny, tmp_path):
    from serving.champion import load_release

    done = _promote(tiny, tmp_path / "releases", "ensemble-tta")
    images = sorted((tiny.root / "TEST" / "class1").iterdir())[:3]
    rows = predict(done.path, [str(p) for p in images])
    assert [r.error for r in rows] == [None] * 3 and all(r.label in ("class0", "class1", "class2") for r in rows)
    loaded = load_release(done.path)  # what `hematune serve` loads
    assert loaded.metrics["stage"] == "ensemble-tta" and loaded.image_size == 16
    described = loaded.describe()  # what GET /model answers and the upload page shows
    assert described["stage"] == "ensemble-tta" and "test-time augmentation" in described["stage_title"]
    probs = np.asarray(loaded.model(np.zeros((1, 16, 16, 3), "float32"), training=False))
    assert probs.shape == (1, 3) and probs.sum() == pytest.approx(1.0, abs=1e-5)


def _one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hematune: error: ") and len(err.strip().splitlines()) == 1, err
    return err


def test_promote_stage_errors_are_one_line_with_exit_2(tiny, tmp_path, capsys):
    common = ["promote", "--study", STUDY, "--studies-dir", str(tiny.studies), "--releases-dir", str(tmp_path / "r"),
              "--reports-dir", str(tiny.reports)]
    err = _one_line_error([*common, "--stage", "refit", "--trial", "0"], capsys)
    assert "STAGE=refit and TRIAL=0 together" in err
    err = _one_line_error([*common, "--stage", "best"], capsys)
    assert "STAGE=best: unknown stage; choose one of trial, cv, refit, ensemble, ensemble-tta" in err
    assert not (tmp_path / "r").exists()

    bare = tmp_path / "studies"  # the same study with no selection results
    shutil.copytree(tiny.studies, bare, ignore=shutil.ignore_patterns("select"))
    assert not stages_path(bare, STUDY).exists()
    err = _one_line_error(["promote", "--study", STUDY, "--studies-dir", str(bare), "--stage", "refit",
                           "--releases-dir", str(tmp_path / "r")], capsys)
    assert f"study {STUDY} has no selection results" in err and f"make select STUDY={STUDY}" in err
    err = _one_line_error(["report", "--study", STUDY, "--studies-dir", str(bare), "--stage", "refit",
                           "--out", str(tmp_path / "out")], capsys)
    assert f"make select STUDY={STUDY}" in err
    err = _one_line_error(["report", "--study", STUDY, "--studies-dir", str(tiny.studies), "--stage", "nope",
                           "--out", str(tmp_path / "out")], capsys)
    assert "STAGE=nope: unknown stage" in err


def test_make_promote_passes_trial_only_when_given():
    def command(*settings: str) -> str:
        out = subprocess.run(["make", "-n", "promote", "STUDY=s", *settings], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout
        return re.sub(r"\s+", " ", out.split("hematune promote")[1])

    assert "--trial" not in command("STAGE=refit") and '--stage "refit"' in command("STAGE=refit")
    assert '--trial "3"' in command("TRIAL=3") and "--stage" not in command("TRIAL=3")
