"""Search-space files: parsing, FIX, conditional parameters and MODEL=all."""
import optuna
import pytest

from models.registry import FAMILIES
from search.errors import SearchConfigError
from search.space import SPACES_DIR, load_space, parse_fixed


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_has_a_valid_space_with_the_usual_knobs(family):
    space = load_space(family)
    training = space.families[family]["training"]
    for knob in ("learning_rate", "aug_strength", "batch_size", "weight_decay", "label_smoothing", "max_epochs",
                 "image_size"):
        assert knob in training
    assert training["learning_rate"]["log"] is True
    trial = optuna.create_study().ask()
    chosen_family, params = space.suggest(trial)
    assert chosen_family == family and "learning_rate" in params


def test_fix_pins_parameters_and_changes_the_fingerprint():
    plain = load_space("mobilenet")
    fixed = load_space("mobilenet", fixed=parse_fixed(["version=v1", "alpha_v1=0.25"]))
    assert plain.fingerprint != fixed.fingerprint
    family, params = fixed.suggest(optuna.create_study().ask())
    assert params["version"] == "v1" and params["alpha_v1"] == 0.25
    assert "alpha_v2" not in params  # conditional on version


def test_conditional_parameters_follow_the_version():
    space = load_space("mobilenet")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        _, params = space.suggest(study.ask())
        alphas = [k for k in params if k.startswith("alpha_")]
        assert alphas == [f"alpha_{params['version']}"]


def test_all_makes_the_family_a_parameter_with_prefixed_names():
    space = load_space("all")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    families = set()
    for _ in range(15):
        trial = study.ask()
        family, params = space.suggest(trial)
        families.add(family)
        assert trial.params["family"] == family
        assert all(k == "family" or k.startswith(f"{family}.") for k in trial.params)
        assert "learning_rate" in params
    assert len(families) >= 3


@pytest.mark.parametrize("kwargs, message", [
    ({"model": "transformer"}, "unknown model"),
    ({"model": "cnn", "fixed": {"nope": 1}}, "has no parameter 'nope'"),
    ({"model": "cnn", "space_file": "/no/such.yaml"}, "does not exist"),
    ({"model": "all", "fixed": {"blocks": 2}}, "FIX= applies to one family"),
])
def test_bad_space_settings(kwargs, message):
    with pytest.raises(SearchConfigError, match=message):
        load_space(**kwargs)


@pytest.mark.parametrize("body, message", [
    ("training: {lr: {type: float, low: 1, high: 0}}", "low <= high"),
    ("training: {lr: {type: float, low: 0, high: 1, log: true}}", "log range"),
    ("training: {lr: {type: gaussian}}", "type must be"),
    ("model: {x: {type: categorical, choices: []}}", "non-empty choices"),
    ("training: [unclosed", "not valid YAML"),
])
def test_bad_space_files(tmp_path, body, message):
    path = tmp_path / "space.yaml"
    path.write_text(body)
    with pytest.raises(SearchConfigError, match=message):
        load_space("cnn", space_file=str(path))


def test_parse_fixed_reads_yaml_scalars():
    assert parse_fixed(["a=1", "b=0.5", "c=true", "d=v1"]) == {"a": 1, "b": 0.5, "c": True, "d": "v1"}
    with pytest.raises(SearchConfigError):
        parse_fixed(["novalue"])


def test_space_files_live_in_studies():
    assert SPACES_DIR.name == "spaces" and SPACES_DIR.parent.name == "studies"
