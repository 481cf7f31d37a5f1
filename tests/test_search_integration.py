"""Real searches, end to end: a slice of the reference set, SQLite storage, resume, pruning.

These train real (small) models, so they are the slow part of the suite.
"""
import sqlite3
from pathlib import Path

import optuna
import pytest

from search.artifacts import artifacts_dir, model_path
from search.cli import main
from search.runner import SearchConfig, run_search
from tests.audit import OpenedPaths

pytestmark = pytest.mark.integration

TINY_CNN = {"image_size": 32, "blocks": 2, "base_width": 8, "batch_size": 32, "dense_units": 0}


def _trials(db: Path, study: str) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT t.number, t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "WHERE s.study_name = ? ORDER BY t.number", (study,)).fetchall()


def test_reference_slice_search_stores_resumes_and_never_reads_test(reference_slice, tmp_path):
    studies = tmp_path / "studies"
    config = SearchConfig(data=str(reference_slice), model="cnn", study="slice", studies_dir=studies, trials=3,
                          max_epochs=2, fixed=TINY_CNN, pruner="none", keep_top=2)
    with OpenedPaths() as opened:
        run_search(config)
    test_dir = str(reference_slice / "TEST")
    test_reads = [p for p in opened.paths if p.startswith(test_dir + "/")]
    assert not test_reads, f"TEST was read during the search: {test_reads[:3]}"
    assert any(p.startswith(str(reference_slice / "TRAIN")) for p in opened.paths)  # the hook does see reads

    db = studies / "hematune.db"
    assert [state for _, state in _trials(db, "slice")] == ["COMPLETE"] * 3
    study = optuna.load_study(study_name="slice", storage=f"sqlite:///{db}")
    attrs = study.user_attrs
    assert attrs["split_rule"].startswith("filename:") and attrs["classes"] == ["EOSINOPHIL", "LYMPHOCYTE",
                                                                                "MONOCYTE", "NEUTROPHIL"]
    assert Path(attrs["split_manifest"]).is_file()
    for trial in study.trials:
        for key in ("val_accuracy_per_epoch", "best_epoch", "param_count", "wall_seconds", "backend", "device",
                    "data_fingerprint", "split_rule", "weights_origin", "versions"):
            assert key in trial.user_attrs, key
        assert trial.value == pytest.approx(max(trial.user_attrs["val_accuracy_per_epoch"]), abs=1e-4)  # best epoch
        assert len(trial.intermediate_values) == trial.user_attrs["epochs_trained"] == 2
    kept = sorted(p.name for p in artifacts_dir(studies, "slice").glob("trial-*.keras"))
    best_two = sorted(study.trials, key=lambda t: (-t.value, t.number))[:2]
    assert kept == sorted(model_path(studies, "slice", t.number).name for t in best_two)

    # Same command again: the study is complete, nothing new is trained.
    run_search(config)
    assert len(_trials(db, "slice")) == 3
    # A larger budget resumes: exactly the missing trial is added, the old ones are untouched.
    config.trials = 4
    run_search(config)
    rows = _trials(db, "slice")
    assert [n for n, _ in rows] == [0, 1, 2, 3] and all(state == "COMPLETE" for _, state in rows)


def test_a_run_built_to_prune_prunes(make_dataset, tmp_path):
    """Two good trials, then hopeless ones (learning rate 1e-7): they are stopped at the first rung (epoch 3).

    Whether the median rule or the not-learning stop takes them depends on their training accuracy; the
    not-learning stop is judged first, so a dead model never sets a rung's bar (tests/test_pruning.py), and
    Optuna's median rule alone is checked against the rung in tests/test_budget.py."""
    root = make_dataset(classes=3, groups=6, per_group=8)
    studies = tmp_path / "studies"
    storage = f"sqlite:///{studies / 'hematune.db'}"
    config = SearchConfig(data=str(root), model="cnn", study="prune", studies_dir=studies, storage=storage,
                          trials=5, max_epochs=4, pruner="median",
                          fixed={**TINY_CNN, "batch_size": 16, "aug_strength": 0.0, "weight_decay": 1e-5,
                                 "label_smoothing": 0.0, "batch_norm": True, "kernel_size": 3, "dropout": 0.0})
    studies.mkdir()
    study = optuna.create_study(study_name="prune", storage=storage, direction="maximize")
    for lr in (1e-2, 1e-2, 1e-7, 1e-7, 1e-7):
        study.enqueue_trial({"learning_rate": lr})
    run_search(config)
    study = optuna.load_study(study_name="prune", storage=storage)
    states = [t.state for t in study.trials]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert states[:2] == [optuna.trial.TrialState.COMPLETE] * 2
    assert pruned, f"no trial was pruned: {[(t.params['learning_rate'], t.intermediate_values) for t in study.trials]}"
    for trial in pruned:
        assert trial.params["learning_rate"] == 1e-7
        assert trial.user_attrs["epochs_trained"] == 3 and "pruned at epoch 3" in trial.user_attrs["prune_reason"]
        assert ("behind other trials" in trial.user_attrs["prune_reason"]
                or "not learning" in trial.user_attrs["prune_reason"])


def test_mobilenet_fine_tuning_with_offline_imagenet_weights(reference_slice, tmp_path, offline_mobilenet_weights):
    studies = tmp_path / "studies"
    code = main(["search", "--model", "mobilenet", "--data", str(reference_slice), "--studies-dir", str(studies),
                 "--trials", "1", "--max-epochs", "2", "--pruner", "none",
                 "--fix", "version=v1 alpha_v1=0.25 image_size=96 batch_size=32",
                 "--fix", "warmup_epochs=1 unfreeze_fraction=0.3"])
    assert code == 0
    study = optuna.load_study(study_name="mobilenet-blood-cells-slice", storage=f"sqlite:///{studies / 'hematune.db'}")
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["weights_origin"].startswith("imagenet") and "MobileNet(alpha=0.25)" in trial.user_attrs[
        "weights_origin"]
    assert trial.user_attrs["unfrozen_layers"] > 0 and trial.user_attrs["epochs_trained"] == 2


def test_backbone_without_offline_weights_fails_with_one_line(reference_slice, tmp_path, capsys):
    studies = tmp_path / "studies"
    code = main(["search", "--model", "mobilenet", "--data", str(reference_slice), "--studies-dir", str(studies),
                 "--trials", "3", "--max-epochs", "1", "--fix", "version=v2 alpha_v2=0.35 image_size=96"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err[-1].startswith("hematune: error:") and "mobilenet_v2_weights" in err[-1] and "WEIGHTS=none" in err[-1]
    study = optuna.load_study(study_name="mobilenet-blood-cells-slice", storage=f"sqlite:///{studies / 'hematune.db'}")
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
    assert "ImageNet weights not found" in study.trials[0].user_attrs["fail_reason"]
