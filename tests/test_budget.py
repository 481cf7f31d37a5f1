"""The TIMEOUT budget: a trial it cuts is pruned (with the reason), and no trial starts that it cannot take
to its first pruning rung (search/budget.py)."""
import io
import time
from datetime import datetime, timedelta

import keras
import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from search.budget import EPOCH_END_SECONDS, BudgetGuard, estimate_seconds_to_rung, seconds_to_epoch
from search.callbacks import EpochReporter
from search.pruning import first_rung, make_pruner
from search.runner import SearchConfig, run_search, spent_seconds

TINY_CNN = {"image_size": 32, "blocks": 2, "base_width": 8, "batch_size": 32, "dense_units": 0}


def _finished(ends=None, state=TrialState.COMPLETE, seconds=None, epochs=None):
    start = datetime(2026, 1, 1)
    attrs = {EPOCH_END_SECONDS: ends} if ends is not None else {"epochs_trained": epochs}
    return FrozenTrial(number=0, trial_id=0, state=state, value=0.5 if state == TrialState.COMPLETE else None,
                       datetime_start=start, datetime_complete=start + timedelta(seconds=seconds or 1), params={},
                       distributions={}, user_attrs=attrs, system_attrs={}, intermediate_values={0: 0.5})


def test_seconds_to_an_epoch_come_from_the_trial_or_are_extrapolated():
    assert seconds_to_epoch(_finished([10.0, 14.0, 18.0]), 2) == 14.0
    assert seconds_to_epoch(_finished([10.0, 14.0]), 4) == 22.0  # 4 s per epoch after the first
    assert seconds_to_epoch(_finished([10.0], state=TrialState.PRUNED), 2) == 20.0
    assert seconds_to_epoch(_finished(seconds=30, epochs=3), 2) == 20.0  # a trial from before epoch times
    assert seconds_to_epoch(_finished(seconds=30, epochs=None), 2) is None


def test_the_estimate_is_the_median_of_finished_trials():
    trials = [_finished([5.0, 8.0]), _finished([10.0, 20.0]), _finished([30.0, 60.0]),
              _finished([1.0, 2.0], state=TrialState.FAIL)]  # a failed trial says nothing about the next one
    assert estimate_seconds_to_rung(trials, 2) == (20.0, 3)
    assert estimate_seconds_to_rung([], 2) is None


def test_the_guard_refuses_a_trial_the_time_left_cannot_take_to_its_rung():
    trials = [_finished([10.0, 20.0])]
    assert BudgetGuard(time.time() + 60, rung=2).why_not_start(trials) is None
    why = BudgetGuard(time.time() + 15, rung=2).why_not_start(trials)
    assert why.startswith("no new trial: the TIMEOUT budget has 1") and "about 20 s to reach epoch 2" in why
    assert BudgetGuard(time.time() + 1, rung=2).why_not_start([]) is None  # nothing to estimate from: start


@pytest.mark.parametrize("pruner", ["hyperband", "median"])
def test_first_rung_is_where_the_pruner_first_prunes(pruner):
    """first_rung must agree with Optuna: no trial is pruned before it, and some are right there."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    earliest = None
    study = optuna.create_study(direction="maximize", pruner=make_pruner(pruner, 12))
    for number in range(30):
        trial = study.ask()
        for step in range(12):
            trial.report(1.0 if number < 5 else 0.0, step)
            if trial.should_prune():
                earliest = step + 1 if earliest is None else min(earliest, step + 1)
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            study.tell(trial, 1.0 if number < 5 else 0.0)
    assert earliest == first_rung(pruner, 12) == 3
    assert first_rung("none", 12) == 12 and first_rung(pruner, 1) == 1


def _epochs_before_the_deadline(first_epoch_s: float, deadline_in_s: float, epochs: int = 6) -> int:
    """Epochs a trial runs when its first epoch took ``first_epoch_s`` (later ones take no time) and the
    study's deadline is ``deadline_in_s`` away when that first epoch ends."""
    trial = optuna.create_study(direction="maximize").ask()
    reporter = EpochReporter(trial, deadline=time.time() + deadline_in_s, started=time.monotonic() - first_epoch_s)
    reporter.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    for epoch in range(epochs):
        reporter.on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5})
        if reporter.stop_reason:
            assert reporter.stop_reason == "deadline"
            return epoch + 1
    return epochs


def test_no_epoch_starts_that_would_end_after_the_deadline_at_the_trials_own_pace():
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # a 100 s first epoch and 60 s left: a second one would overrun the budget, so the trial stops now
    assert _epochs_before_the_deadline(100.0, 60.0) == 1
    # 150 s left: the second epoch fits by the first's time; after it, the pace is the later epochs' (~0 s)
    assert _epochs_before_the_deadline(100.0, 150.0) == 6
    # past the deadline already: stop whatever the pace
    assert _epochs_before_the_deadline(0.0, -1.0) == 1


@pytest.mark.integration
def test_a_trial_cut_by_the_budget_is_pruned_and_none_starts_that_cannot_reach_its_rung(make_dataset, tmp_path):
    root = make_dataset(classes=3, groups=4, per_group=3)
    studies = tmp_path / "studies"
    config = SearchConfig(data=str(root), model="cnn", study="budget", studies_dir=studies, trials=5,
                          timeout=1.0, max_epochs=3, pruner="median", fixed=dict(TINY_CNN))
    out = io.StringIO()
    study = run_search(config, console=Console(file=out, width=300)).study
    [trial] = study.trials  # the first epoch alone outlasts a 1 s budget
    assert trial.state == TrialState.PRUNED, trial.state
    assert trial.user_attrs["prune_reason"] == "stopped by the TIMEOUT budget after epoch 1"
    assert len(trial.user_attrs[EPOCH_END_SECONDS]) == 1 and not trial.user_attrs.get("model_saved")

    # resumed with 1 s more: a trial needs about two first epochs to reach epoch 2, so none starts
    config.timeout = spent_seconds(study) + 1.0
    out = io.StringIO()
    study = run_search(config, console=Console(file=out, width=300)).study
    assert len(study.trials) == 1
    assert "no new trial: the TIMEOUT budget has 1 s left and a trial needs about" in out.getvalue()
