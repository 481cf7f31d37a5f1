"""Helpers for the tests that run real ``hematune`` worker processes (test_workers, test_crash).

Workers are separate processes, as a user runs them: ``python -m search …``
with a short heartbeat (1 s) and grace period (4 s) so that recovering a
killed worker's trial takes seconds, not minutes.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

from tests.conftest import make_class_folder

REPO = Path(__file__).resolve().parent.parent
HEARTBEAT_S, GRACE_S = 1, 4
# the tiny model every worker test trains: a few seconds per trial on two cores
TINY = ["--model", "cnn", "--fix", "image_size=32", "--fix", "blocks=2", "--pruner", "none"]


def tiny_dataset(root: Path, classes: int = 3, groups: int = 4, per_group: int = 3) -> Path:
    for label in range(classes):
        make_class_folder(root / "TRAIN" / f"class{label}", label, groups, per_group)
        make_class_folder(root / "TEST" / f"class{label}", label, 2, per_group, group_offset=100)
    return root


def tiny_study(base: Path, study: str, trials: int, max_epochs: int):
    """A real CNN study of ``trials`` tiny trials on ``tiny_dataset(base / "cells")`` (decode cache in
    ``base / "cache"``), for tests that need a study to report or release: (data root, its StudyView)."""
    from reports.study import load
    from search.runner import SearchConfig, run_search

    root = tiny_dataset(base / "cells")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEMATUNE_CACHE", str(base / "cache"))
        run_search(SearchConfig(data=str(root), model="cnn", study=study, studies_dir=base / "studies",
                                trials=trials, max_epochs=max_epochs, fixed={"image_size": 32, "blocks": 2},
                                pruner="none"))
    return root, load(study, studies_dir=base / "studies")


def tiny_releases(base: Path, study: str, trials: int, max_epochs: int, promote=(None,)):
    """``tiny_study`` and a release of each trial in ``promote`` (None: the best) in ``base / "releases"``, as
    `make promote` makes them: (data root, the Promoted of each)."""
    from reports import release

    root, view = tiny_study(base, study, trials, max_epochs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEMATUNE_CACHE", str(base / "cache"))
        done = [release.promote(view, trial, releases_dir=base / "releases", reports_dir=base / "reports")
                for trial in promote]
    return root, done


def worker_env(cache: Path, **extra: str) -> dict:
    return {**os.environ, "HEMATUNE_CACHE": str(cache), "HEMATUNE_HEARTBEAT_S": str(HEARTBEAT_S),
            "HEMATUNE_GRACE_S": str(GRACE_S), "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **extra}


STARTED: list[subprocess.Popen] = []  # every process `start` made; conftest kills the ones a test left running


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """``hematune <args>`` as its own process, stdout and stderr to ``log`` (stderr also kept apart)."""
    out = open(log, "w")
    err = open(log.with_suffix(".err"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "search", *args], cwd=REPO, env=env, stdout=out, stderr=err)
    STARTED.append(proc)
    return proc


def kill_leftovers() -> None:
    """Kill what a failed test left running (its workers die with it: they are started with a parent-death
    signal), so one failure does not leave processes that load the machine for every later test."""
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def run(args: list[str], env: dict, log: Path, timeout: float = 300) -> tuple[int, str, str]:
    proc = start(args, env, log)
    proc.wait(timeout=timeout)
    return proc.returncode, log.read_text(), log.with_suffix(".err").read_text()


def load(storage_url: str, study: str) -> optuna.Study:
    from search.storage import open_storage

    return optuna.load_study(study_name=study, storage=open_storage(storage_url))


def wait_for(predicate, what: str, timeout: float = 240, procs=()) -> None:
    """Poll ``predicate`` until true; fail (not hang) when it never is, or when a worker died early."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"a worker exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def postgres_url() -> str:
    """The test server's URL (.ci/postgres.sh); CI must have one, a developer's machine may skip."""
    url = os.environ.get("HEMATUNE_TEST_POSTGRES_URL")
    if not url:
        message = ("HEMATUNE_TEST_POSTGRES_URL is not set; start the test server with "
                   "eval \"$(.ci/postgres.sh)\" (as root)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url


def unique_study(prefix: str) -> str:
    """PostgreSQL outlives a test run: every test gets a study name of its own."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
