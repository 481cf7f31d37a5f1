"""Several worker processes on one study: the local SQLite file and a real PostgreSQL server.

Two levels: the storage alone under four processes writing as fast as they
can (trivial objective, many trials), and four real ``hematune`` workers
training on one study. Both check the same things: no "database is locked"
or other error, trial numbers unique, every trial a worker finished present
in the storage as it reported it.
"""
from __future__ import annotations

import re
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from tests.worker_tools import REPO, TINY, load, postgres_url, run, tiny_dataset, unique_study, worker_env

STORAGE_WRITER = r"""
import sys, optuna
from search.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
study = optuna.load_study(study_name=name, storage=open_storage(url),
                          sampler=optuna.samplers.TPESampler(constant_liar=True, n_startup_trials=4))
def objective(trial):
    x = trial.suggest_float("x", 0, 1)
    for step in range(3):
        trial.report(x, step)
        trial.set_user_attr(f"step{step}", step)
    print("done", trial.number, x, flush=True)
    return x
study.optimize(objective, n_trials=n)
"""


def _storage_url(kind: str, tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'studies' / 'hematune.db'}" if kind == "sqlite" else postgres_url()


def _drop(url: str, name: str) -> None:
    if url.startswith("postgresql"):
        from search.storage import open_storage

        optuna.delete_study(study_name=name, storage=open_storage(url))


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_storage_takes_four_processes_writing_at_once(kind, tmp_path):
    url, name, workers, per_worker = _storage_url(kind, tmp_path), unique_study("writers"), 4, 12
    from search.storage import open_storage

    optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize")
    try:
        procs = [subprocess.Popen([sys.executable, "-c", STORAGE_WRITER, url, name, str(per_worker)], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(workers)]
        outputs = [proc.communicate(timeout=300)[0] for proc in procs]
        for proc, output in zip(procs, outputs):
            assert "locked" not in output.lower(), output
            assert proc.returncode == 0, output
        reported = {int(n): float(x) for output in outputs for _, n, x in re.findall(r"^(done) (\d+) (\S+)$",
                                                                                      output, re.M)}
        trials = load(url, name).get_trials(deepcopy=False)
        assert sorted(t.number for t in trials) == list(range(workers * per_worker))  # unique, none lost
        assert all(t.state == TrialState.COMPLETE for t in trials)
        assert {t.number: t.value for t in trials} == reported
        assert all(t.user_attrs == {"step0": 0, "step1": 1, "step2": 2} for t in trials)
    finally:
        _drop(url, name)


COMPLETE_LINE = re.compile(r"^\[w(\d+)\].*trial (\d+) complete: val_acc ([0-9.]+)", re.M)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_four_workers_share_one_study(kind, tmp_path):
    """sqlite: `hematune search --workers 4` creates the study and starts the workers;
    postgresql: the study is created first and `hematune worker --workers 4` joins it by name only."""
    url, name, trials = _storage_url(kind, tmp_path), unique_study("four"), 4
    data = tiny_dataset(tmp_path / "cells")
    studies = tmp_path / "studies"
    env = worker_env(tmp_path / "cache")
    common = ["--study", name, "--storage", url, "--studies-dir", str(studies), "--trials", str(trials),
              "--workers", "4"]
    if kind == "sqlite":
        args = ["search", "--data", str(data), *TINY, "--max-epochs", "1", *common]
    else:
        from search.runner import SearchConfig
        from search.space import parse_fixed
        from search.workers import create_or_check_study

        create_or_check_study(SearchConfig(data=str(data), model="cnn", study=name, storage=url, studies_dir=studies,
                                           fixed=parse_fixed(["image_size=32", "blocks=2"]), pruner="none",
                                           max_epochs=1))
        args = ["worker", *common]
    try:
        code, out, err = run(args, env, tmp_path / "workers.log")
        assert "locked" not in (out + err).lower()
        assert code == 0, out[-3000:] + err[-3000:]
        assert len(set(re.findall(r"^\[w(\d+)\]", out, re.M))) == 4  # four workers ran
        reported = {int(n): (int(w), float(v)) for w, n, v in COMPLETE_LINE.findall(out)}
        study = load(url, name)
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        assert sorted(by_number) == list(range(len(by_number)))  # numbers unique and contiguous
        complete = [t for t in by_number.values() if t.state == TrialState.COMPLETE]
        finished = [t for t in by_number.values() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) >= trials  # the study reached its count (up to 3 more: trials already running)
        assert len(finished) <= trials + 3
        assert {n for n in reported} == {t.number for t in complete}  # every finished trial is stored …
        for number, (_, value) in reported.items():
            assert by_number[number].value == pytest.approx(value, abs=1e-4)  # … as its worker reported it
        assert len(set(re.findall(r"^\[w(\d+)\].*trial \d+ (?:complete|pruned)", out, re.M))) >= 2  # shared out
        params = [tuple(sorted(t.params.items())) for t in finished]
        assert len(set(params)) == len(params)  # workers proposed different trials (own sampler seeds)
        assert not [t for t in by_number.values() if t.state == TrialState.RUNNING]
        # the supervisor printed the one summary; workers only their trials
        assert out.count(f"{name}: ") == 1
    finally:
        _drop(url, name)
