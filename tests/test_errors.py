"""One error model: one root user error, one first-line rule, --debug, and a failed trial's traceback."""
from __future__ import annotations

import optuna
import pytest

from data_pipeline.errors import DataError, HematuneError, first_line
from models.errors import ModelConfigError
from reports.errors import ReportError
from search.cli import main
from search.errors import SearchConfigError
from search.objective import SearchContext, objective


@pytest.mark.parametrize("error", [DataError, ModelConfigError, SearchConfigError, ReportError])
def test_every_user_error_has_the_one_root(error):
    assert issubclass(error, HematuneError)


def test_report_error_is_no_search_error():
    assert not issubclass(ReportError, SearchConfigError)


def test_first_line_of_a_message():
    assert first_line(ValueError("\n  bad file x\nmore detail\n")) == "bad file x"
    assert first_line(RuntimeError()) == "RuntimeError"  # an empty message still says something
    assert first_line("") == ""
    assert first_line(OSError("x" * 50), 10) == "x" * 10


def test_a_user_error_is_one_line_without_debug(tmp_path, capsys):
    argv = ["report", "--study", "nothing-here", "--studies-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hematune: error: STORAGE=") and err.count("\n") == 1 and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ReportError, match="no study database"):
        main(["--debug", "report", "--study", "nothing-here", "--studies-dir", str(tmp_path)])


def test_a_failed_trial_keeps_its_traceback_beside_its_reason(tmp_path):
    study = optuna.create_study()
    broken = SearchContext(data=None, space=None, studies_dir=tmp_path)  # no search space: the trial cannot start
    study.optimize(objective(broken), n_trials=1, catch=(Exception,))
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith("AttributeError: ")
    trace = trial.user_attrs["fail_traceback"]
    assert trace.startswith("Traceback (most recent call last):") and "in run_trial" in trace
    assert trace.rstrip().endswith(trial.user_attrs["fail_reason"])
