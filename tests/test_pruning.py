"""The chance-level guard in front of Optuna's pruners."""
import optuna

from search.pruning import ChanceLevelPruner, make_pruner


def _trial(study, values):
    trial = study.ask()
    for step, value in enumerate(values):
        trial.report(value, step)
    return trial


def test_a_trial_stuck_at_chance_is_pruned_after_patience_epochs():
    study = optuna.create_study(direction="maximize", pruner=ChanceLevelPruner(optuna.pruners.NopPruner(), 0.25))
    assert not _trial(study, [0.25, 0.26]).should_prune()  # too early to tell
    assert _trial(study, [0.25, 0.26, 0.24]).should_prune()
    assert not _trial(study, [0.25, 0.26, 0.40]).should_prune()  # it learned something
    assert "commonest class" in study.pruner.why([0.25, 0.26, 0.24])


def test_otherwise_the_wrapped_pruner_decides():
    study = optuna.create_study(direction="maximize",
                                pruner=ChanceLevelPruner(optuna.pruners.ThresholdPruner(lower=0.9), 0.25))
    assert _trial(study, [0.5]).should_prune()  # the threshold pruner's call, not chance


def test_make_pruner():
    assert isinstance(make_pruner("none", 10, 0.25), optuna.pruners.NopPruner)
    assert isinstance(make_pruner("hyperband", 10, 0.25).base, optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("median", 10, 0.25).base, optuna.pruners.MedianPruner)
