"""Pruner choice and the not-learning stop."""
import optuna

from search.pruning import make_pruner, not_learning


def test_not_learning_needs_training_accuracy_at_chance_for_three_epochs():
    assert not not_learning([0.25, 0.26], chance=0.25)  # too early to tell
    assert not_learning([0.25, 0.26, 0.24], chance=0.25)
    assert not not_learning([0.25, 0.26, 0.40], chance=0.25)  # it learned something
    assert not not_learning([0.53, 0.78, 0.85], chance=0.25)  # learning; validation may still lag


def test_make_pruner():
    assert isinstance(make_pruner("none", 10), optuna.pruners.NopPruner)
    assert isinstance(make_pruner("hyperband", 10), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("median", 10), optuna.pruners.MedianPruner)
