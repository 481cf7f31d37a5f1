"""The TIMEOUT budget: start a trial only when the time left can take it to its first pruning rung.

A trial the budget cuts before the pruner could judge it has told the sampler
nothing comparable and cost the time anyway; one cut later is recorded as
pruned ("stopped by the TIMEOUT budget after epoch N", search/objective.py),
never as complete. The estimate comes from the study's own finished trials:
each records when each of its epochs ended, counted from the trial's start so
decoding, building and compiling are included (``epoch_end_seconds``); the
time a trial needs to reach the rung is the median over finished trials of
the time they took to end that epoch, extrapolated at their mean epoch time
for trials that stopped earlier. With no finished trial yet there is nothing
to estimate from, and the trial starts.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.keys import EPOCH_END_SECONDS, EPOCHS_TRAINED

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def seconds_per_epoch(ends: list[float]) -> float:
    """A trial's pace from its epoch end times (seconds from its start): the mean epoch after the first, which
    also holds decoding, building and compiling and so counts only while it is the only one."""
    if len(ends) < 2:
        return float(ends[0]) if ends else 0.0
    return (ends[-1] - ends[0]) / (len(ends) - 1)


def seconds_to_epoch(trial: FrozenTrial, epochs: int) -> float | None:
    """How long ``trial`` took (or would have taken) to finish ``epochs`` epochs; None without a record."""
    ends = trial.user_attrs.get(EPOCH_END_SECONDS)
    if not ends:
        trained = trial.user_attrs.get(EPOCHS_TRAINED)  # a trial from before epoch times were recorded
        if not trained or trial.duration is None:
            return None
        return trial.duration.total_seconds() * epochs / trained
    if len(ends) >= epochs:
        return float(ends[epochs - 1])
    return float(ends[-1] + seconds_per_epoch(ends) * (epochs - len(ends)))


def estimate_seconds_to_rung(trials: list[FrozenTrial], rung: int) -> tuple[float, int] | None:
    """(median seconds to the end of epoch ``rung``, number of finished trials it is taken over), or None."""
    times = [s for t in trials if t.state in FINISHED and (s := seconds_to_epoch(t, rung)) is not None]
    return (statistics.median(times), len(times)) if times else None


@dataclass
class BudgetGuard:
    """Optuna callback: after each trial, stop the study when the time left cannot take a new trial to its
    first pruning rung; ``stopped`` then says why, in one line."""

    deadline: float  # time.time() at which the TIMEOUT budget is spent
    rung: int  # search.pruning.first_rung: epochs before the pruner can judge a trial
    stopped: str | None = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = self.why_not_start(study.get_trials(deepcopy=False))
        if reason:
            self.stopped = reason
            study.stop()

    def why_not_start(self, trials: list[FrozenTrial]) -> str | None:
        """Why no new trial may start now (one line), or None when one may."""
        estimate = estimate_seconds_to_rung(trials, self.rung)
        if estimate is None:
            return None
        needed, over = estimate
        left = self.deadline - time.time()
        if needed <= left:
            return None
        return (f"no new trial: the TIMEOUT budget has {max(left, 0):.0f} s left and a trial needs about "
                f"{needed:.0f} s to reach epoch {self.rung}, where it can first be judged (median of {over} "
                "finished trial(s)); raise TIMEOUT to search more")
