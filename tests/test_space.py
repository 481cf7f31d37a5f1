"""Search-space files: parsing, FIX, conditional parameters, MODEL=all and the CPU/GPU profiles."""
import optuna
import pytest

from models.registry import FAMILIES
from search import preflight
from search.errors import SearchConfigError
from search.space import PROFILE_DIRS, SPACES_DIR, load_family_space, load_space, parse_fixed, profile_for


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
    ("training: {lr: {type: gaussian}}", "type: must be one of"),
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


# --- device profiles: studies/spaces/<family>.yaml (CPU) and studies/spaces/gpu/<family>.yaml ---------------

GPU = "gpu: NVIDIA H100 80GB HBM3"
CPU = "cpu: 2 cores, Intel Xeon"


@pytest.mark.parametrize("device, profile", [
    (GPU, "gpu"), ("gpu: Tesla T4", "gpu"), (CPU, "cpu"), ("cpu: 16 cores, AMD EPYC", "cpu"), ("", "cpu"),
])
def test_profile_follows_the_device_text(device, profile):
    assert profile_for(device) == profile
    space = load_space("cnn", device=device)
    assert space.profile == profile
    expected = "studies/spaces/gpu/cnn.yaml" if profile == "gpu" else "studies/spaces/cnn.yaml"
    assert space.source == expected
    assert space.families["cnn"] == load_family_space("cnn", PROFILE_DIRS[profile])


def test_the_first_lines_name_the_profile_and_the_file():
    assert load_space("cnn", device=GPU).describe() == "space studies/spaces/gpu/cnn.yaml (GPU profile: accelerator found)"
    assert load_space("vgg", device=CPU).describe() == "space studies/spaces/vgg.yaml (CPU profile: no accelerator found)"
    assert load_space("all", device=GPU).describe() == "space studies/spaces/gpu/*.yaml (GPU profile: accelerator found)"


def test_an_explicit_space_file_wins_over_the_gpu_profile(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("training: {image_size: 32, learning_rate: 0.001, batch_size: 8, max_epochs: 1}\n"
                    "model: {blocks: 2, base_width: {type: categorical, choices: [4, 8]}}\n")
    space = load_space("cnn", space_file=str(path), device=GPU)
    assert space.families["cnn"]["training"]["image_size"] == 32
    assert space.families["cnn"]["model"]["base_width"]["choices"] == [4, 8]
    assert space.explicit and space.source == str(path)
    assert space.describe() == f"space {path} (SPACE=, instead of the GPU profile's studies/spaces/gpu/cnn.yaml)"


def test_fix_pins_parameters_of_the_gpu_profile():
    space = load_space("cnn", device=GPU, fixed=parse_fixed(["image_size=96", "blocks=4"]))
    _, params = space.suggest(optuna.create_study().ask())
    assert params["image_size"] == 96 and params["blocks"] == 4
    assert params["base_width"] in (16, 32, 64)  # still the GPU file's choices


def _values(spec) -> list:
    return spec["choices"] if spec["type"] == "categorical" else [spec["low"], spec["high"]]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_has_both_profiles_and_the_gpu_one_is_larger(family):
    cpu, gpu = load_space(family, device=CPU), load_space(family, device=GPU)
    assert (SPACES_DIR / f"{family}.yaml").is_file() and (SPACES_DIR / "gpu" / f"{family}.yaml").is_file()
    assert cpu.fingerprint != gpu.fingerprint  # resuming on the other profile is noticed
    c, g = cpu.families[family]["training"], gpu.families[family]["training"]
    assert set(cpu.families[family]["model"]) == set(gpu.families[family]["model"])  # same knobs, other ranges
    assert set(c) == set(g)
    assert max(_values(g["image_size"])) > max(_values(c["image_size"])) or family != "cnn"
    assert max(_values(g["image_size"])) == (160 if family == "cnn" else 224)
    assert min(_values(g["image_size"])) >= (64 if family == "cnn" else 128)
    assert max(_values(g["batch_size"])) > max(_values(c["batch_size"]))
    assert g["max_epochs"] > c["max_epochs"]
    preflight.check_image_sizes(gpu)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        chosen, params = gpu.suggest(study.ask())
        assert chosen == family and "learning_rate" in params


def test_gpu_cnn_is_wider_and_every_depth_fits_every_image_size():
    model = load_space("cnn", device=GPU).families["cnn"]["model"]
    assert max(model["base_width"]["choices"]) == 64
    sizes = load_space("cnn", device=GPU).families["cnn"]["training"]["image_size"]["choices"]
    # models/cnn.py refuses image_size < 2 ** blocks * 2: no trial of this space may be unbuildable
    assert min(sizes) >= 2 ** model["blocks"]["high"] * 2


def test_resuming_on_the_other_profile_is_refused_naming_both_profiles(make_dataset, tmp_path):
    from search.data import prepare
    from search.runner import SearchConfig, open_study
    from search.storage import open_storage

    data = prepare(make_dataset(), seed=0)
    config = SearchConfig(data=str(data.index.root), study="profiles", studies_dir=tmp_path / "studies")
    storage = open_storage(f"sqlite:///{tmp_path / 'studies.db'}")
    (tmp_path / "studies").mkdir()
    open_study(config, storage, data, load_space("cnn", device=CPU), 12)
    open_study(config, storage, data, load_space("cnn", device=CPU), 12)  # same profile: resumes
    with pytest.raises(SearchConfigError) as refused:
        open_study(config, storage, data, load_space("cnn", device=GPU), 27)
    message = str(refused.value)
    assert "\n" not in message
    assert message == ("STUDY=profiles: was created with the CPU profile's search space (studies/spaces/cnn.yaml) and "
                       "this run has the GPU profile's (studies/spaces/gpu/cnn.yaml); resume it on a CPU machine, pass "
                       "SPACE=studies/spaces/cnn.yaml to keep its space, or use a new STUDY name")
    # the way out it names works: the CPU file named explicitly on the GPU machine is the study's space
    explicit = load_space("cnn", device=GPU, space_file=str(SPACES_DIR / "cnn.yaml"))
    open_study(config, storage, data, explicit, 12)


def test_a_space_change_within_one_profile_keeps_the_usual_message():
    stored = load_space("cnn", device=CPU).as_dict()
    changed = load_space("cnn", device=CPU, fixed={"blocks": 3})
    assert changed.change_from(stored).startswith("was created with a different search space (MODEL, SPACE or FIX changed")
    old = {"model": "cnn", "families": stored["families"]}  # a study created before profiles were recorded
    assert "profile not recorded" in load_space("cnn", device=GPU).change_from(old)


# --- every key of a space file is checked, one line per mistake; step is honoured -------------------------

def _load_body(tmp_path, body: str):
    path = tmp_path / "space.yaml"
    path.write_text(body)
    return path, lambda: load_space("cnn", space_file=str(path), device=CPU)


@pytest.mark.parametrize("body, line", [
    ("training: {lr: {type: float, low: abc, high: 1}}", "training.lr: low: 'abc' is not a number"),
    ("training: {lr: {type: float, low: 0.1, high: [1]}}", "training.lr: high: [1] is not a number"),
    ("model: {blocks: {type: int, low: 2.5, high: 4}}", "model.blocks: low: 2.5 is not a whole number"),
    ("model: {blocks: {type: int, low: 2}}", "model.blocks: high: missing"),
    ("training: {lr: {type: float, lo: 0.1, high: 1}}", "training.lr: lo: not a key of a float entry"),
    ("training: {lr: {type: float, low: 0.1, high: 1, log: yes please}}", "training.lr: log: 'yes please' is not true or false"),
    ("training: {lr: {type: float, low: 0.1, high: 1, step: 0}}", "training.lr: step: 0 is not a number above 0"),
    ("training: {lr: {type: float, low: 0.1, high: 1, log: true, step: 0.1}}", "training.lr: step: a log range cannot have a step"),
    ("model: {blocks: {type: int, low: 2, high: 5, step: 2}}", "model.blocks: step: high - low (5 - 2) is not a multiple of step 2"),
    ("model: {width: {type: categorical, choices: [8], low: 1}}", "model.width: low: not a key of a categorical entry"),
    ("model: {width: {type: categorical, choices: [8], when: {nope: 1}}}", "model.width: when: 'nope' is not a parameter defined above"),
    ("modle: {width: 8}", "modle: not a section"),
])
def test_each_mistake_in_a_space_file_gets_its_line(tmp_path, body, line):
    path, load = _load_body(tmp_path, body)
    with pytest.raises(SearchConfigError) as raised:
        load()
    assert any(shown.startswith(f"{path}: {line}") for shown in str(raised.value).splitlines())


def test_several_mistakes_are_all_reported_one_line_each(tmp_path):
    path, load = _load_body(tmp_path, "training: {lr: {type: float, low: abc, high: 1, setp: 0.1}}\n"
                                      "model: {blocks: {type: int, low: 2, high: x}}\n")
    with pytest.raises(SearchConfigError) as raised:
        load()
    lines = str(raised.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{path}: ") for line in lines)


def test_a_bad_space_file_is_one_line_per_mistake_on_the_command_line(tmp_path, capsys):
    from search.cli import main

    path, _ = _load_body(tmp_path, "training: {learning_rate: {type: float, low: abc, high: 1.0e-2}}\n")
    data = tmp_path / "no-data-needed"
    assert main(["search", "--data", str(data), "--space", str(path), "--studies-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err == f"hematune: error: {path}: training.learning_rate: low: 'abc' is not a number; write e.g. low: 1.0e-3\n"


@pytest.mark.parametrize("spec, allowed", [
    ("{type: float, low: 0.0, high: 0.5, step: 0.25}", {0.0, 0.25, 0.5}),
    ("{type: int, low: 16, high: 64, step: 16}", {16, 32, 48, 64}),
])
def test_step_is_honoured_by_the_sampler(tmp_path, spec, allowed):
    _, load = _load_body(tmp_path, f"training: {{image_size: 32, learning_rate: 0.001}}\nmodel: {{width: {spec}}}\n")
    space = load()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {space.suggest(study.ask())[1]["width"] for _ in range(40)}
    assert seen == allowed
