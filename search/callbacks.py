"""Keras callbacks that connect a training run to its Optuna trial.

* `EpochReporter` — reports group-validation accuracy to Optuna every epoch,
  stops at once when the pruner says so, and keeps the best epoch's weights
  (small augmented sets swing a lot between epochs, so the trial is scored and
  saved at its best epoch, not its last). Also stops on a NaN loss, a model
  that is not learning at all (`search.pruning.not_learning`) and before an
  epoch that would end after the study's wall-clock deadline at the trial's
  own pace, so TIMEOUT is kept rather than overrun by up to an epoch (the
  objective records a trial cut there as pruned by the budget,
  search/budget.py).
* `BatchProgress` — a live progress bar on a terminal; silent otherwise.
* `InterruptCheck` — re-raises a Ctrl-C whose exception Python swallowed
  (`search.interrupts`), at the next batch.
"""
from __future__ import annotations

import math
import time

import keras
import optuna

from search import interrupts
from search.budget import seconds_per_epoch
from search.pruning import not_learning

METRIC = "val_accuracy"  # what Keras 3 logs for metrics=["accuracy"] on validation data


class EpochReporter(keras.callbacks.Callback):
    def __init__(self, trial: optuna.Trial, *, deadline: float | None, chance: float | None = None, on_epoch=None,
                 started: float | None = None):
        super().__init__()
        self.trial = trial
        self.chance = chance  # training accuracy of always guessing the commonest class
        self.deadline = deadline
        self.on_epoch = on_epoch  # callable(epoch, logs, reporter) for terminal output
        self.history: list[dict] = []
        self.best_value = -math.inf
        self.best_epoch: int | None = None
        self.best_weights = None
        self.stop_reason: str | None = None  # "pruned", "not_learning", "nan", "deadline"
        # time.monotonic() at the trial's start: each epoch's "seconds" then include decoding, building and
        # compiling, which is what the TIMEOUT budget needs to know of a trial (search/budget.py)
        self._started = time.monotonic() if started is None else started

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if METRIC not in logs:
            raise KeyError(f"Keras logged {sorted(logs)}, not {METRIC}: validation data or metrics are missing")
        value, loss = float(logs[METRIC]), float(logs.get("loss", math.nan))
        self.history.append({
            "epoch": epoch, "loss": loss, "accuracy": float(logs.get("accuracy", math.nan)),
            "val_loss": float(logs.get("val_loss", math.nan)), "val_accuracy": value,
            "seconds": round(time.monotonic() - self._started, 2),
        })
        if not math.isfinite(loss):
            self.stop_reason = "nan"
        else:
            if value > self.best_value:
                self.best_value, self.best_epoch = value, epoch
                self.best_weights = self.model.get_weights()
            self.trial.report(value, step=epoch)
            # not learning is decided first: should_prune() enters the trial's value at a rung, where a dead
            # model's chance-level score would become the bar that learning models are judged against
            if self.chance is not None and not_learning([h["accuracy"] for h in self.history], self.chance):
                self.stop_reason = "not_learning"
            elif self.trial.should_prune():
                self.stop_reason = "pruned"
            elif self.deadline is not None and time.time() + seconds_per_epoch([h["seconds"] for h in self.history]) > self.deadline:
                self.stop_reason = "deadline"
        if self.on_epoch is not None:
            self.on_epoch(epoch, logs, self)
        if self.stop_reason:
            self.model.stop_training = True

    def restore_best(self) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class BatchProgress(keras.callbacks.Callback):
    """A transient rich progress bar over the batches of each epoch (terminals only)."""

    def __init__(self, progress, description: str, steps: int):
        super().__init__()
        self.progress, self.description, self.steps = progress, description, steps
        self.task = None

    def on_train_begin(self, logs=None):
        self.progress.start()

    def on_train_end(self, logs=None):
        self.progress.stop()

    def on_epoch_begin(self, epoch, logs=None):
        self.task = self.progress.add_task(f"{self.description} epoch {epoch + 1}", total=self.steps)

    def on_train_batch_end(self, batch, logs=None):
        self.progress.update(self.task, completed=batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self.progress.remove_task(self.task)


class InterruptCheck(keras.callbacks.Callback):
    """After every training and validation batch: stop for a Ctrl-C that arrived but was not raised."""

    def on_train_batch_end(self, batch, logs=None):
        interrupts.check()

    def on_test_batch_end(self, batch, logs=None):
        interrupts.check()
