"""What a person sees while a search runs: which trial, epoch progress, best so far.

One line per epoch and per trial outcome (good in logs and CI), plus a live
batch progress bar when the output is a terminal.
"""
from __future__ import annotations

import time

import optuna
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from search import keys
from search.callbacks import BatchProgress


def _short(params: dict) -> str:
    parts = []
    for name, value in params.items():
        if name == "max_epochs":
            continue
        if isinstance(value, float):
            value = f"{value:.3g}"
        parts.append(f"{name}={value}")
    return " ".join(parts)


class TerminalReporter:
    def __init__(self, study: optuna.Study, console: Console | None = None):
        self.study = study
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.live = self.console.is_terminal
        if not self.live:
            self.console.width = 140  # logs and CI: keep tables readable instead of 80 columns
        self._trial_started = 0.0
        self._trial_number = -1
        self._max_epochs = 0

    # --- run level -------------------------------------------------------
    def line(self, text: str) -> None:
        self.console.print(text)

    def best_so_far(self) -> str:
        try:
            best = self.study.best_trial
        except ValueError:
            return "no completed trial yet"
        return f"best so far {best.value:.4f} (trial {best.number}, {best.user_attrs.get(keys.FAMILY, '?')})"

    # --- trial level -----------------------------------------------------
    def trial_started(self, trial: optuna.Trial, family: str, params: dict, max_epochs: int) -> None:
        self._trial_started, self._trial_number, self._max_epochs = time.monotonic(), trial.number, max_epochs
        self.console.print(f"[bold]trial {trial.number}[/bold] {family}: {_short(params)}")

    def batch_callbacks(self, n_images: int, batch_size: int) -> list:
        if not self.live:
            return []
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=self.console, transient=True)
        steps = -(-n_images // batch_size)
        return [BatchProgress(progress, f"  trial {self._trial_number}", steps)]

    def epoch_ended(self, epoch: int, logs: dict, reporter) -> None:
        marker = " *" if reporter.best_epoch == epoch else ""
        self.console.print(
            f"  epoch {epoch + 1:>2}/{self._max_epochs}  loss {logs.get('loss', float('nan')):.3f}  "
            f"acc {logs.get('accuracy', float('nan')):.3f}  val_loss {logs.get('val_loss', float('nan')):.3f}  "
            f"val_acc {logs.get('val_accuracy', float('nan')):.4f}{marker}  "
            f"[{time.monotonic() - self._trial_started:.0f}s]"
        )

    def trial_failed(self, trial: optuna.Trial, reason: str) -> None:
        self.console.print(f"  [red]trial {trial.number} failed[/red]: {reason}")

    def trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback, called after each trial is stored."""
        state = trial.state.name.lower()
        if trial.state == optuna.trial.TrialState.COMPLETE:
            detail = f"val_acc {trial.value:.4f} at epoch {trial.user_attrs.get(keys.BEST_EPOCH, 0) + 1}"
        elif trial.state == optuna.trial.TrialState.PRUNED:
            detail = trial.user_attrs.get(keys.PRUNE_REASON, "pruned")
        else:
            detail = trial.user_attrs.get(keys.FAIL_REASON, "")
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        self.console.print(f"  → trial {trial.number} {state}: {detail} ({seconds:.0f}s) · {self.best_so_far()}")
