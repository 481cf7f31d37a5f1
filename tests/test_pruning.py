"""Pruning judges learning models against learning models: a dead model never sets the bar at a rung."""
import keras
import optuna
from optuna.trial import TrialState

from search.callbacks import EpochReporter
from search.pruning import NOT_LEARNING_EPOCHS, make_pruner

CHANCE = 0.25


def _run(study: optuna.Study, train_acc: list[float], val_acc: list[float]) -> tuple[optuna.trial.FrozenTrial, str]:
    """Feed one trial's epochs through the reporter a search uses; return the stored trial and why it stopped."""
    trial = study.ask()
    reporter = EpochReporter(trial, deadline=None, chance=CHANCE)
    reporter.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    for epoch, (acc, val) in enumerate(zip(train_acc, val_acc)):
        reporter.on_epoch_end(epoch, {"loss": 1.0, "accuracy": acc, "val_loss": 1.0, "val_accuracy": val})
        if reporter.stop_reason:
            break
    stop = reporter.stop_reason or "complete"
    study.tell(trial, state=TrialState.PRUNED) if reporter.stop_reason else study.tell(trial, reporter.best_value)
    return study.trials[-1], stop


def test_dead_models_are_stopped_before_they_reach_a_rung_and_do_not_prune_a_learning_model():
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", pruner=make_pruner("hyperband", 12),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    dead = [CHANCE] * 12
    for _ in range(2):  # two models that never leave the commonest-class rate, even on their training data
        trial, stop = _run(study, dead, [0.24] * 12)
        assert stop == "not_learning" and len(trial.intermediate_values) == NOT_LEARNING_EPOCHS
        assert not any(key.startswith("completed_rung") for key in trial.system_attrs)
    # a batch-norm model that learns (training accuracy climbs) while validation is still below chance early on
    trial, stop = _run(study, [0.58, 0.81, 0.86, 0.9, 0.92, 0.93] + [0.95] * 6,
                       [0.24, 0.22, 0.21, 0.55, 0.7, 0.8] + [0.85] * 6)
    assert stop == "complete", f"stopped as {stop} at epoch {len(trial.intermediate_values)}"
