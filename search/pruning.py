"""Pruners: Optuna's Hyperband (default) or median rule, plus a chance-level guard.

Hyperband compares a trial only with others in its own bracket, so in the
first trials of a small CPU budget it has nothing to compare with and lets a
dead model (stuck at chance, as a CNN without batch-norm at too high a
learning rate often is) train to its epoch cap. The guard stops a trial whose
validation accuracy has stayed at the majority-class rate — what always
guessing the commonest class scores — for ``patience`` epochs, whatever the
bracket; everything else is the wrapped pruner's decision.
"""
from __future__ import annotations

import optuna

PRUNERS = ("hyperband", "median", "none")
CHANCE_MARGIN = 0.02  # within two points of guessing counts as guessing
CHANCE_PATIENCE = 3  # epochs


class ChanceLevelPruner(optuna.pruners.BasePruner):
    def __init__(self, base: optuna.pruners.BasePruner, chance: float, patience: int = CHANCE_PATIENCE):
        self.base, self.chance, self.patience = base, chance, patience

    def at_chance(self, values) -> bool:
        values = list(values)
        return len(values) >= self.patience and max(values) <= self.chance + CHANCE_MARGIN

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if self.at_chance(trial.intermediate_values.values()):
            return True
        return self.base.prune(study, trial)

    def why(self, values) -> str:
        if self.at_chance(values):
            return f"no better than always guessing the commonest class ({self.chance:.3f}) for {len(list(values))} epochs"
        return "behind other trials at the same epoch"


def make_pruner(name: str, max_epochs: int, chance: float) -> optuna.pruners.BasePruner:
    """PRUNER= → pruner; ``chance`` is the validation set's majority-class rate."""
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "hyperband":
        base = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_epochs, 1), reduction_factor=3)
    else:
        base = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return ChanceLevelPruner(base, chance)
