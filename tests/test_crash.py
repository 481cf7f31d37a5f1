"""Ctrl-C and kill -9 in the middle of a trial: nothing finished is lost, the study resumes.

One study, three worker processes in turn (real ``hematune worker`` runs):

1. worker A gets SIGINT half-way through its second trial: it records the
   trial as failed with the reason, queues its parameters again, and exits 130
   with one line;
2. worker B runs that retry, then is killed with SIGKILL half-way through its
   next trial: the trial stays RUNNING, since nobody can record anything;
3. worker C, started after the heartbeat grace period, finds the dead trial,
   marks it failed, runs its parameters again and takes the study to its
   trial count.

Then the storage is checked: every trial that completed before each blow is
still there with its value, both victims are failed and retried, nothing is
left running or queued, and the model files are exactly the top trials', each
loadable.
"""
from __future__ import annotations

import signal
import time

import keras
import pytest
from optuna.trial import TrialState

from search import artifacts
from tests.worker_tools import GRACE_S, load, run, start, tiny_dataset, wait_for, worker_env

MAX_EPOCHS, TRIALS, KEEP_TOP = 8, 5, 2


@pytest.fixture
def crash_study(tmp_path):
    from search.runner import SearchConfig
    from search.space import parse_fixed
    from search.workers import create_or_check_study

    studies = tmp_path / "studies"
    config = SearchConfig(data=str(tiny_dataset(tmp_path / "cells")), model="cnn", study="crash",
                          storage=f"sqlite:///{studies / 'hematune.db'}", studies_dir=studies,
                          fixed=parse_fixed(["image_size=32", "blocks=2"]), pruner="none", max_epochs=MAX_EPOCHS,
                          keep_top=KEEP_TOP)
    create_or_check_study(config)
    return config


def test_sigint_and_sigkill_mid_trial_lose_nothing(crash_study, tmp_path):
    config = crash_study
    url, studies = config.storage_url(), config.studies_dir
    env = worker_env(tmp_path / "cache")
    worker = ["worker", "--study", "crash", "--storage", url, "--studies-dir", str(studies), "--trials", str(TRIALS)]
    study = load(url, "crash")
    trials = lambda: {t.number: t for t in study.get_trials(deepcopy=False)}  # noqa: E731
    completed = lambda: {n: t.value for n, t in trials().items() if t.state == TrialState.COMPLETE}  # noqa: E731

    def mid_trial() -> list[int]:
        """Running trials with at least one epoch reported and more to go."""
        return [n for n, t in trials().items()
                if t.state == TrialState.RUNNING and 1 <= len(t.intermediate_values) < MAX_EPOCHS]

    # 1. Ctrl-C half-way through worker A's second trial
    a = start(worker, env, tmp_path / "a.log")
    wait_for(lambda: completed() and mid_trial(), "worker A to be half-way through its second trial", procs=[a])
    interrupted, before_a = mid_trial()[0], completed()
    a.send_signal(signal.SIGINT)
    assert a.wait(timeout=120) == 130
    err = (tmp_path / "a.err").read_text()
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("hematune")] == [
        "hematune: interrupted: the running trial was recorded as failed; re-run the same command to resume"]
    after_a = trials()
    assert after_a[interrupted].state == TrialState.FAIL
    assert after_a[interrupted].user_attrs["fail_reason"].startswith("interrupted (Ctrl-C or SIGINT)")
    queued = [t for t in after_a.values() if t.user_attrs.get("retry_of") == interrupted]
    assert len(queued) == 1 and queued[0].state == TrialState.WAITING
    assert queued[0].params == after_a[interrupted].params
    assert {n: after_a[n].value for n in before_a} == before_a

    # 2. kill -9 half-way through worker B's trial after the retry
    b = start(worker, env, tmp_path / "b.log")
    retry_a = queued[0].number
    wait_for(lambda: trials()[retry_a].state == TrialState.COMPLETE and [n for n in mid_trial() if n > retry_a],
             "worker B to run the retry, then be half-way through its next trial", procs=[b])
    killed, before_b = [n for n in mid_trial() if n > retry_a][0], completed()
    b.kill()
    b.wait(timeout=30)
    assert trials()[killed].state == TrialState.RUNNING  # a killed process records nothing: the heartbeat will
    assert before_a.items() <= before_b.items()

    # 3. resume after the grace period: the dead trial is found, failed, retried; the study reaches TRIALS
    time.sleep(GRACE_S + 1)
    code, out, err = run(worker, env, tmp_path / "c.log")
    assert code == 0, out[-2000:] + err[-2000:]
    final = trials()
    assert {n: final[n].value for n in before_b} == before_b  # nothing that completed was lost
    assert final[killed].state == TrialState.FAIL
    retries = {t.user_attrs["retry_of"]: t for t in final.values() if "retry_of" in t.user_attrs}
    assert set(retries) == {interrupted, killed}
    assert all(t.state == TrialState.COMPLETE for t in retries.values())
    assert retries[killed].params == final[killed].params
    assert "no heartbeat" in retries[killed].user_attrs["retry_reason"]
    assert retries[killed].system_attrs["failed_trial"] == killed  # Optuna's own retry record
    assert sum(t.state == TrialState.COMPLETE for t in final.values()) >= TRIALS
    assert not [t for t in final.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]

    # model files: exactly the top trials', whole and loadable; no orphans or temporary files
    folder = artifacts.artifacts_dir(studies, "crash")
    top = artifacts.top_trial_numbers(study, KEEP_TOP)
    model_files = sorted(p.name for p in folder.iterdir() if p.is_file())  # (dashboard/ holds annotations)
    assert model_files == sorted(f"trial-{n:05d}.keras" for n in top)
    for number in top:
        model = keras.saving.load_model(artifacts.model_path(studies, "crash", number), safe_mode=True)
        assert model.output_shape[-1] == 3
