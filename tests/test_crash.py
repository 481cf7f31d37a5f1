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
# a trial the tests signal must have 3 or more epochs to go: one seen at its last epoch can finish before the
# signal lands (a CI run saw a trial a Ctrl-C was sent to complete), and these tiny epochs take well under a second
MID_TRIAL_EPOCHS = range(1, MAX_EPOCHS - 2)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


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
    finished = lambda: [n for n, t in trials().items() if t.state in FINISHED]  # noqa: E731 (pruned: not learning)

    def mid_trial() -> list[int]:
        """Running trials with at least one epoch reported and 3 or more to go."""
        return [n for n, t in trials().items()
                if t.state == TrialState.RUNNING and len(t.intermediate_values) in MID_TRIAL_EPOCHS]

    # 1. Ctrl-C half-way through worker A's second trial
    a = start(worker, env, tmp_path / "a.log")
    wait_for(lambda: finished() and mid_trial(), "worker A to be half-way through its second trial", procs=[a])
    a.send_signal(signal.SIGINT)
    assert a.wait(timeout=120) == 130
    before_a = completed()
    interrupted = [n for n, t in trials().items() if t.user_attrs.get("fail_reason", "").startswith("interrupted")]
    assert len(interrupted) == 1
    interrupted = interrupted[0]
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
    wait_for(lambda: trials()[retry_a].state in FINISHED and [n for n in mid_trial() if n > retry_a],
             "worker B to run the retry, then be half-way through its next trial", procs=[b])
    b.kill()
    b.wait(timeout=30)
    before_b = completed()
    running = [n for n, t in trials().items() if t.state == TrialState.RUNNING]
    assert len(running) == 1  # a killed process records nothing: its trial stays RUNNING, the heartbeat will tell
    killed = running[0]
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
    assert all(t.state in FINISHED for t in retries.values())
    assert retries[killed].params == final[killed].params
    assert "no heartbeat" in retries[killed].user_attrs["retry_reason"]
    assert retries[killed].system_attrs["failed_trial"] == killed  # Optuna's own retry record
    assert sum(t.state in FINISHED for t in final.values()) >= TRIALS  # TRIALS counts complete + pruned
    assert not [t for t in final.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]

    # model files: exactly the top trials', whole and loadable; no orphans or temporary files
    folder = artifacts.artifacts_dir(studies, "crash")
    top = artifacts.top_trial_numbers(study, KEEP_TOP)
    model_files = sorted(p.name for p in folder.iterdir() if p.is_file())  # (dashboard/ holds annotations)
    assert model_files == sorted(f"trial-{n:05d}.keras" for n in top)
    for number in top:
        model = keras.saving.load_model(artifacts.model_path(studies, "crash", number), safe_mode=True)
        assert model.output_shape[-1] == 3


def _exists(url: str, study: str) -> bool:
    try:
        load(url, study)
    except Exception:  # noqa: BLE001 — not created yet (no file, no tables, no study)
        return False
    return True


def test_ctrl_c_to_local_workers_records_every_running_trial(tmp_path):
    """`hematune search --workers 2` and one Ctrl-C: each worker records its trial as interrupted and queues it."""
    data, studies = tiny_dataset(tmp_path / "cells"), tmp_path / "studies"
    url = f"sqlite:///{studies / 'hematune.db'}"
    # a budget the run cannot reach before the Ctrl-C, so the workers are still busy whenever both are seen mid-trial
    supervisor = start(["search", "--data", str(data), "--studies-dir", str(studies), "--study", "ctrl-c",
                        "--trials", "200", "--max-epochs", str(MAX_EPOCHS), "--workers", "2", "--model", "cnn",
                        "--fix", "image_size=32", "--fix", "blocks=2", "--pruner", "none"],
                       worker_env(tmp_path / "cache"), tmp_path / "supervisor.log")
    wait_for(lambda: _exists(url, "ctrl-c"), "the study to be created", procs=[supervisor])
    study = load(url, "ctrl-c")

    def mid_trial() -> list[int]:
        return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if len(t.intermediate_values) in MID_TRIAL_EPOCHS]

    wait_for(lambda: len(mid_trial()) == 2, "both workers half-way through a trial", procs=[supervisor])
    running = mid_trial()
    supervisor.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends
    assert supervisor.wait(timeout=180) == 130
    err = (tmp_path / "supervisor.err").read_text()
    assert "Traceback" not in err + (tmp_path / "supervisor.log").read_text()
    assert [line for line in err.splitlines() if line.startswith("hematune")] == [
        "hematune: interrupted: the running trial was recorded as failed; re-run the same command to resume"]
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number in running:
        assert trials[number].state == TrialState.FAIL
        assert trials[number].user_attrs["fail_reason"].startswith("interrupted (Ctrl-C or SIGINT)")
    queued = {t.user_attrs["retry_of"] for t in trials.values() if t.state == TrialState.WAITING}
    assert queued == set(running)
    assert not [t for t in trials.values() if t.state == TrialState.RUNNING]


def test_decoder_killed_mid_write_leaves_no_orphan(tmp_path, make_dataset):
    """A decode-cache writer killed with SIGKILL leaves a temporary file as large as the data set; the next
    decode removes it once it is stale and its process is gone (a live writer's file is kept)."""
    import os
    import subprocess
    import sys

    from data_pipeline.cache import DEAD_WRITER_AGE_S, load_or_decode
    from data_pipeline.ingest import scan

    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is now free: a writer that died
    old = time.time() - DEAD_WRITER_AGE_S - 60
    orphans = {name: cache / name for name in (f"0123abcd.npy.tmp-{dead.pid}", f"0123abcd.json.tmp-{dead.pid}")}
    live = cache / f"4567ef01.npy.tmp-{os.getpid()}"  # a writer still running
    recent = cache / f"89abcdef.npy.tmp-{dead.pid + 1_000_000}"  # gone, but touched a moment ago
    for path in [*orphans.values(), live, recent]:
        path.write_bytes(b"\0" * 1000)
    for path in [*orphans.values(), live]:
        os.utime(path, (old, old))
    decoded = load_or_decode(scan(make_dataset()).train, 32, cache)
    assert decoded.usable.all()
    assert not any(path.exists() for path in orphans.values())
    assert live.exists() and recent.exists()


def test_a_ctrl_c_swallowed_by_a_finalizer_still_stops_training(monkeypatch):
    """The CI flake behind `search.interrupts`: a signal whose KeyboardInterrupt is raised inside a ``__del__``
    is printed as 'ignored' and lost; the recorded request must still stop training at the next batch."""
    import gc
    import sys

    import keras
    import numpy as np

    from search import interrupts
    from search.callbacks import InterruptCheck

    monkeypatch.setattr(interrupts, "_requested", False)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
    previous = signal.getsignal(signal.SIGUSR1)
    interrupts.install(signal.SIGUSR1)  # SIGUSR1 stands in for SIGINT, so pytest's own Ctrl-C is left alone

    class SignalledDuringCollection:
        def __del__(self):
            signal.raise_signal(signal.SIGUSR1)  # the handler's KeyboardInterrupt is swallowed right here

    try:
        x, y = np.zeros((16, 4), "float32"), np.zeros((16,), "int32")
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        model.compile("sgd", "sparse_categorical_crossentropy")
        model.fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=[InterruptCheck()])  # no request: trains
        SignalledDuringCollection()  # collected at once; the interrupt does not propagate
        gc.collect()
        with pytest.raises(KeyboardInterrupt):
            model.fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=[InterruptCheck()])
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_only_a_recorded_ctrl_c_is_kept_out_of_the_ignored_exception_report(monkeypatch):
    """The 'Exception ignored' traceback is left out for a swallowed Ctrl-C (it is raised again later) — and for
    nothing else: any other unraisable exception, or a KeyboardInterrupt no signal recorded, is reported."""
    import sys
    import types

    from search import interrupts

    reported = []
    monkeypatch.setattr(sys, "__unraisablehook__", reported.append)
    unraisable = lambda exc: types.SimpleNamespace(exc_value=exc)  # noqa: E731 - the fields the hook reads

    monkeypatch.setattr(interrupts, "_requested", True)
    interrupts._report_unraisable(unraisable(KeyboardInterrupt()))
    assert reported == []
    interrupts._report_unraisable(unraisable(ValueError("a real finalizer bug")))
    monkeypatch.setattr(interrupts, "_requested", False)
    interrupts._report_unraisable(unraisable(KeyboardInterrupt()))
    assert [type(u.exc_value) for u in reported] == [ValueError, KeyboardInterrupt]
