"""`hematune select`: group folds, kill -9 and resume, TEST never opened, the five stages written and loadable.

One tiny search (2 trials of a 1-block CNN at 16 px, 1 epoch) feeds every test here; select then
cross-validates its 2 trials on 3 group folds. The kill is a real SIGKILL of a real ``hematune select``
process, after its first fold is on disk.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from data_pipeline.errors import DataError
from data_pipeline.split import group_kfold
from search.layout import select_dir
from search.stages import STAGES, load_stages
from tests.audit import OpenedPaths
from tests.worker_tools import load, start, tiny_dataset, wait_for, worker_env

TINY = {"image_size": 16, "blocks": 1, "base_width": 8, "batch_size": 16, "dense_units": 0}
TOP, FOLDS = 2, 3


# --- the folds ---

def test_group_kfold_validates_every_group_exactly_once_and_never_on_both_sides():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), rng.integers(1, 6, size=40))  # uneven group sizes
    labels = groups % 4  # a group belongs to one class
    folds = group_kfold(labels, groups.astype(str), 5, seed=3)
    assert len(folds) == 5
    validated = np.concatenate([val for _, val in folds])
    assert sorted(validated.tolist()) == list(range(len(groups)))  # every file validated exactly once
    for train, val in folds:
        assert not set(groups[train]) & set(groups[val])  # no group on both sides
        assert set(labels[val]) == set(labels[train]) == {0, 1, 2, 3}
        assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(groups)))
    seen = [g for _, val in folds for g in set(groups[val])]
    assert sorted(seen) == sorted(set(groups.tolist()))  # every group in exactly one fold's validation
    # seeded: the same seed gives the same folds, another seed other folds
    again = group_kfold(labels, groups.astype(str), 5, seed=3)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again))
    other = group_kfold(labels, groups.astype(str), 5, seed=4)
    assert any(len(a[1]) != len(b[1]) or (a[1] != b[1]).any() for a, b in zip(folds, other))


def test_group_kfold_refuses_a_class_with_fewer_groups_than_folds_in_one_line():
    labels = np.array([0] * 10 + [1] * 4)
    groups = np.array([f"a{i}" for i in range(10)] + ["b0", "b0", "b1", "b1"])
    with pytest.raises(DataError) as caught:
        group_kfold(labels, groups, 3, seed=0, classes=("BASOPHIL", "EOSINOPHIL"))
    message = str(caught.value)
    assert "\n" not in message and "EOSINOPHIL" in message and "FOLDS=3" in message and "FOLDS=2" in message


# --- pruning and the budget (no training: Optuna's own in-memory storage) ---

def test_fold_pruner_prunes_only_a_finalist_clearly_worse_on_enough_common_folds():
    from search.select import FoldWilcoxonPruner

    study = optuna.create_study(direction="maximize", pruner=FoldWilcoxonPruner())
    leader = study.ask()
    for k, value in enumerate([0.90, 0.88, 0.91, 0.89, 0.90]):
        leader.report(value, step=k)
    worse, close = study.ask(), study.ask()
    for k, (bad, near) in enumerate([(0.70, 0.91), (0.72, 0.86), (0.69, 0.92), (0.71, 0.87)]):
        worse.report(bad, step=k)
        close.report(near, step=k)
        # 3 common folds all worse: one-sided p = 1/8, not below 0.1; 4: p = 1/16
        assert worse.should_prune() == (k >= 3)
        assert not close.should_prune()  # as good as the leader on average: never pruned
    assert not leader.should_prune()


def test_budget_keeps_the_leaders_folds_and_refit():
    from search.select import Finalist, budget_stop

    study = optuna.create_study(direction="maximize")
    for value in (0.9, 0.8):  # the search: each trial took 100 s to its chosen epoch (epoch 2)
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"epoch_end_seconds": [60.0, 100.0]}))
    a, b = (Finalist(t, rank, "cnn", {}, 16, 2, 2, 0, pool_scale=1.25) for rank, t in enumerate(study.trials))
    assert a.pool_cost() == 125.0 and a.fold_cost(5) == 100.0  # a fold of 5 trains on 4/5 of the pool
    finalists, folds = [a, b], 5
    assert budget_stop(b, finalists, folds, None) is None
    # the leader (a: best search value while no fold is done) needs 5 folds + a refit of 5/4 fold = 625 s
    assert budget_stop(b, finalists, folds, 725.0) is None
    assert "leader (trial 0" in budget_stop(b, finalists, folds, 724.0)
    assert budget_stop(a, finalists, folds, 1.0) is None  # the leader always goes on
    a.scores, a.seconds = {0: 0.7}, {0: 100.0}
    b.scores, b.seconds = {0: 0.9}, {0: 100.0}  # b leads now: a must leave room for b's 4 folds and refit
    assert budget_stop(a, finalists, folds, 200 + 100 + 525) is None
    assert budget_stop(a, finalists, folds, 200 + 100 + 524) is not None


def test_auto_folds_keep_the_leaders_folds_and_refit_inside_the_timeout():
    from search.select import auto_folds, leader_cost

    assert leader_cost(100.0, 5) == 625.0  # 5 folds + a refit on 5/4 of a fold
    # 100 s for the chosen epochs on the whole pool: K folds of (K-1)/K of it and the refit on all cost K × 100 s
    assert auto_folds(100.0, None) == 5  # no budget: the default 5
    assert auto_folds(100.0, 500.0) == 5
    assert auto_folds(100.0, 499.0) == 4
    assert auto_folds(100.0, 300.0) == 3
    assert auto_folds(100.0, 299.0) == 2
    assert auto_folds(100.0, 10.0) == 2  # never fewer than 2: the select then warns it runs over
    assert auto_folds(0.0, 10.0) == 5  # nothing measured to estimate from


# --- a tiny searched study ---

@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    from search.runner import SearchConfig, run_search

    root = tmp_path_factory.mktemp("select")
    cache = root / "cache"
    old = os.environ.get("HEMATUNE_CACHE")
    os.environ["HEMATUNE_CACHE"] = str(cache)  # the module's processes share one decode cache
    try:
        data = tiny_dataset(root / "cells", classes=3, groups=6, per_group=3)
        studies = root / "studies"
        run_search(SearchConfig(data=str(data), model="cnn", study="tiny", studies_dir=studies, trials=2,
                                max_epochs=1, fixed=TINY, pruner="none", keep_top=2))
        yield {"root": root, "data": data, "studies": studies, "cache": cache,
               "url": f"sqlite:///{studies / 'hematune.db'}"}
    finally:
        if old is None:
            os.environ.pop("HEMATUNE_CACHE", None)
        else:
            os.environ["HEMATUNE_CACHE"] = old


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("fold-*")}


def test_kill_9_resumes_without_redoing_folds_never_opens_test_and_writes_five_loadable_stages(searched, tmp_path,
                                                                                                monkeypatch):
    from search.select import run_select, select_study_name

    monkeypatch.setenv("HEMATUNE_CACHE", str(searched["cache"]))
    studies, url = searched["studies"], searched["url"]
    folder = select_dir(studies, "tiny")
    args = ["select", "--study", "tiny", "--studies-dir", str(studies), "--top", str(TOP), "--folds", str(FOLDS)]
    proc = start(args, worker_env(searched["cache"]), tmp_path / "select.log")
    try:
        wait_for(lambda: any(folder.glob("fold-t*-k0.json")), "the first finished fold", procs=[proc])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done_before = _files(folder)
    assert any(name.endswith(".json") for name in done_before)
    select_study = load(url, select_study_name("tiny"))
    assert [t.state for t in select_study.get_trials()] == [TrialState.RUNNING] * TOP  # left by the dead process

    leftover = folder / f".fold-t0-k1.tmp-{proc.pid}.keras"  # what a kill during a model save leaves
    leftover.write_bytes(b"half a model")

    with OpenedPaths() as opened:
        outcome = run_select("tiny", url, studies, top=TOP, folds=FOLDS)
    assert not leftover.exists()  # its writer is dead: swept
    test_dir = str(searched["data"] / "TEST")
    assert not [p for p in opened.paths if p.startswith(test_dir + "/")], "select opened or listed TEST"
    assert any(p.startswith(str(searched["data"] / "TRAIN")) for p in opened.paths)  # the hook sees reads

    # finished folds were kept as they were, not trained again; the missing ones were added
    after = _files(folder)
    assert {name: after[name] for name in done_before} == done_before
    assert len([n for n in after if n.endswith(".json")]) == TOP * FOLDS
    # the dead process's trials are failed, each finalist has exactly one complete trial with every fold
    select_study = load(url, select_study_name("tiny"))
    trials = select_study.get_trials()
    assert sorted(t.state for t in trials[:TOP]) == [TrialState.FAIL] * TOP
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == TOP and not [t for t in trials if t.state == TrialState.RUNNING]
    assert sorted(t.user_attrs["source_trial"] for t in complete) == sorted(
        f["trial"] for f in outcome.summary["finalists"])
    for trial in complete:
        assert sorted(trial.intermediate_values) == list(range(FOLDS))
        assert trial.value == pytest.approx(np.mean(list(trial.intermediate_values.values())), abs=1e-9)

    # every source group validated exactly once: each group's files share one fold, every fold has images
    folds = json.loads((folder / "folds.json").read_text())
    fold_of_group: dict[str, set[int]] = {}
    for rel, k in folds["files"]:
        name = Path(rel)
        fold_of_group.setdefault(f"{name.parent.name}/{name.name.split('_')[1]}", set()).add(k)
    assert all(len(ks) == 1 for ks in fold_of_group.values()) and len(fold_of_group) == 3 * 6
    assert {k for ks in fold_of_group.values() for k in ks} == set(range(FOLDS))
    records = [json.loads(p.read_text()) for p in folder.glob("fold-*.json")]
    assert all(r["fold_hash"] == folds["hash"] and r["train_images"] + r["val_images"] == 54 for r in records)

    # the five stages, in order, each a file that loads in safe mode and classifies the input size
    stages, summary = load_stages(studies, "tiny")
    assert tuple(s.name for s in stages) == STAGES
    assert summary["folds"] == FOLDS and summary["winner_trial"] == stages[1].source_trial
    assert summary["fold_hash"] == folds["hash"] and summary["recommended"] == "ensemble-tta"
    assert stages[0].val_sd is None and all(s.val_sd is not None for s in stages[1:])
    assert [s.members for s in stages] == [1, 1, 1, FOLDS, FOLDS]
    from reports.evaluate import load_model

    x = np.random.default_rng(0).integers(0, 256, size=(4, 16, 16, 3)).astype("uint8")
    outputs = {}
    for stage in stages:
        assert stage.model_path.is_absolute() and stage.model_path.is_file(), stage
        outputs[stage.name] = np.asarray(load_model(stage.model_path).predict(x, verbose=0))
        assert outputs[stage.name].shape == (4, 3)
        assert np.allclose(outputs[stage.name].sum(axis=1), 1.0, atol=1e-4)
    # the ensemble is the winner's fold models, averaged
    members = [np.asarray(load_model(folder / f"fold-t{summary['winner_trial']}-k{k}.keras").predict(x, verbose=0))
               for k in range(FOLDS)]
    assert np.allclose(outputs["ensemble"], np.mean(members, axis=0), atol=1e-5)
    for name in ("refit", "ensemble", "ensemble-tta"):
        provenance = json.loads((folder / f"{name}.json").read_text())
        assert provenance["parent_study"] == "tiny" and provenance["fold_hash"] == folds["hash"]
        assert provenance["data_fingerprint"] and provenance["versions"]

    # the same command once more trains nothing: every fold and the refit are on disk
    refit_mtime = (folder / "refit.keras").stat().st_mtime_ns
    run_select("tiny", url, studies, top=TOP, folds=FOLDS)
    assert _files(folder) == after and (folder / "refit.keras").stat().st_mtime_ns == refit_mtime
    assert len(load(url, select_study_name("tiny")).get_trials()) == len(trials)


def test_select_errors_are_one_line(searched, capsys, monkeypatch):
    from search.cli import main

    monkeypatch.setenv("HEMATUNE_CACHE", str(searched["cache"]))
    base = ["select", "--studies-dir", str(searched["studies"])]
    assert main([*base, "--study", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hematune: error: STUDY=nope: no such study")
    assert main([*base, "--study", "tiny", "--folds", "9"]) == 2  # 6 source groups per class in TRAIN
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "FOLDS=9" in err[0] and "fewer" in err[0]


def test_a_second_select_of_the_same_study_is_refused_while_one_runs(searched, capsys, monkeypatch):
    import fcntl

    from search.cli import main
    from search.layout import select_dir

    monkeypatch.setenv("HEMATUNE_CACHE", str(searched["cache"]))
    folder = select_dir(searched["studies"], "tiny")
    folder.mkdir(parents=True, exist_ok=True)
    before = sorted(p.name for p in folder.iterdir())
    with open(folder / "select.lock", "a") as running:  # what a running select holds
        fcntl.flock(running, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["select", "--studies-dir", str(searched["studies"]), "--study", "tiny", "--folds", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another select of this study is running" in err[0]
    assert sorted(p.name for p in folder.iterdir()) == sorted({*before, "select.lock"})  # nothing written


def test_timeout_keeps_the_leader_and_stops_the_other_finalist(searched, tmp_path, monkeypatch, capsys):
    import shutil
    import sqlite3

    from search.select import run_select, select_study_name

    monkeypatch.setenv("HEMATUNE_CACHE", str(searched["cache"]))
    studies = tmp_path / "studies"  # the searched study alone (no select results), in a copy
    studies.mkdir()
    with sqlite3.connect(searched["studies"] / "hematune.db") as source, \
            sqlite3.connect(studies / "hematune.db") as copy:
        source.backup(copy)  # the storage runs in WAL mode: a file copy could miss what the log holds
    for part in ("artifacts", "splits"):
        shutil.copytree(searched["studies"] / part, studies / part)
    url = f"sqlite:///{studies / 'hematune.db'}"
    outcome = run_select("tiny", url, studies, top=2, folds=2, timeout=0.5)
    out = capsys.readouterr().out
    assert "more than TIMEOUT=0s leaves" in out  # said up front: the leader alone is over the budget
    leader, other = outcome.summary["finalists"]
    assert outcome.summary["winner_trial"] == leader["trial"] and not leader["pruned"]
    assert None not in leader["fold_scores"] and other["fold_scores"] == [None, None]
    assert other["pruned"] and "TIMEOUT" in other["pruned_reason"]
    trials = [t for t in load(url, select_study_name("tiny")).get_trials()
              if t.user_attrs.get("select_fold_hash") == outcome.summary["fold_hash"]]
    states = {t.user_attrs["source_trial"]: t for t in trials}
    assert states[leader["trial"]].state == TrialState.COMPLETE
    assert states[other["trial"]].state == TrialState.PRUNED
    assert states[other["trial"]].user_attrs["select_pruned_by"] == "budget"
    assert all(stage.model_path.is_file() for stage in outcome.stages)
