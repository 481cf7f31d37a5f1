"""Pruners: Optuna's Hyperband (default) or median rule — and a not-learning stop.

Hyperband compares a trial only with others in its own bracket, so in the
first trials of a small CPU budget it has nothing to compare with and lets a
dead model (a CNN without batch-norm at too high a learning rate often never
leaves the majority-class rate, even on its training data) train to its epoch
cap. `not_learning` spots such a model from its *training* accuracy, which a
merely slow-to-generalise model (validation at chance for a few epochs while
batch-norm statistics settle) does not trip.
"""
from __future__ import annotations

import optuna

PRUNERS = ("hyperband", "median", "none")
CHANCE_MARGIN = 0.02  # within two points of guessing counts as guessing
NOT_LEARNING_EPOCHS = 3


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_epochs, 1), reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def not_learning(train_accuracies: list[float], chance: float, epochs: int = NOT_LEARNING_EPOCHS) -> bool:
    """True when training accuracy has stayed at the majority-class rate for ``epochs`` epochs."""
    return len(train_accuracies) >= epochs and max(train_accuracies) <= chance + CHANCE_MARGIN
