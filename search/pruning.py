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


# The first judgement comes only once the not-learning stop has had its say (after NOT_LEARNING_EPOCHS
# epochs). Earlier, a batch-norm model that is learning well can still score below chance on validation
# (its statistics are still settling), and dead models sitting at the commonest-class rate beat it at the
# rung: measured in the default blood-cells search, the trial that was best in both earlier runs (training
# accuracy 0.81, validation 0.22 after 2 epochs) was pruned at epoch 2 by two dead models' 0.24.
MIN_RESOURCE = NOT_LEARNING_EPOCHS - 1  # Hyperband: first rung at step (epoch index) 2, i.e. after 3 epochs
WARMUP_STEPS = NOT_LEARNING_EPOCHS - 1  # median: no pruning before step 2, i.e. after 3 epochs


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=MIN_RESOURCE, max_resource=max(max_epochs, 1),
                                              reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=WARMUP_STEPS)
    return optuna.pruners.NopPruner()


def first_rung(name: str, max_epochs: int) -> int:
    """Epochs a trial must train before the pruner can first judge it (steps are 0-based epoch indices).

    A trial stopped before then has told the sampler nothing comparable, so the TIMEOUT budget does not
    start one it cannot take that far (search/budget.py). With Hyperband this is its earliest bracket's
    rung (later brackets judge later); with PRUNER=none nothing is judged early: the whole trial.
    """
    if name == "hyperband":
        return min(MIN_RESOURCE + 1, max_epochs)
    if name == "median":
        return min(WARMUP_STEPS + 1, max_epochs)
    return max_epochs


def not_learning(train_accuracies: list[float], chance: float, epochs: int = NOT_LEARNING_EPOCHS) -> bool:
    """True when training accuracy has stayed at the majority-class rate for ``epochs`` epochs."""
    return len(train_accuracies) >= epochs and max(train_accuracies) <= chance + CHANCE_MARGIN
