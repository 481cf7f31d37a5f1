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


def worker_env(cache: Path, **extra: str) -> dict:
    return {**os.environ, "HEMATUNE_CACHE": str(cache), "HEMATUNE_HEARTBEAT_S": str(HEARTBEAT_S),
            "HEMATUNE_GRACE_S": str(GRACE_S), "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **extra}


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """``hematune <args>`` as its own process, stdout and stderr to ``log`` (stderr also kept apart)."""
    out = open(log, "w")
    err = open(log.with_suffix(".err"), "w")
    return subprocess.Popen([sys.executable, "-m", "search", *args], cwd=REPO, env=env, stdout=out, stderr=err)


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
