"""The benchmark suite's own logic (``make bench``) — never its timings.

What would make a benchmark number wrong without any error: KerasTuner
searching a different space than hematune, a subsample that splits a source
cell's copies, a budget that does not stop a tuner, a best-so-far curve or
time-to-target computed wrongly.
"""
from __future__ import annotations

import numpy as np
import pytest

from bench.common import best_so_far, make_subset, time_to
from search.data import prepare
from search.space import load_family_space

kt = pytest.importorskip("keras_tuner")


def test_kerastuner_hypermodel_declares_the_hematune_space():
    from bench.kt_search import CnnHyperModel

    space = load_family_space("cnn", fixed={"image_size": 32})
    hp = kt.HyperParameters()
    model = CnnHyperModel(space, num_classes=4, seed=0).build(hp)
    declared = {p.name: p for p in hp.space}
    searched = {name: spec for section in space.values() for name, spec in section.items() if isinstance(spec, dict)}
    assert set(declared) == set(searched)
    for name, spec in searched.items():
        p = declared[name]
        if spec["type"] == "categorical":
            assert list(p.values) == list(spec["choices"]), name
        else:
            assert (p.min_value, p.max_value) == (spec["low"], spec["high"]), name
            assert p.sampling == ("log" if spec.get("log") else "linear"), name
    assert model.input_shape == (None, 32, 32, 3)  # FIX values reach the model
    assert model.output_shape == (None, 4)


def test_kerastuner_run_stops_at_its_budget_and_records_each_trial(tmp_path):
    from bench.kt_search import kt_search

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(24, 32, 32, 3), dtype=np.uint8)
    y = np.arange(24) % 2
    space = load_family_space("cnn", fixed={"image_size": 32, "blocks": 2, "base_width": 8, "batch_size": 32})
    none, model = kt_search("kt-random", (x, y, x[:8], y[:8]), 2, space, budget_s=0, max_epochs=1, seed=0,
                            directory=tmp_path / "none")
    assert none["n_trials"] == 0 and model is None  # past the deadline: no trial starts
    some, model = kt_search("kt-random", (x, y, x[:8], y[:8]), 2, space, budget_s=1e-9 + 5, max_epochs=2, seed=0,
                            directory=tmp_path / "some")
    assert some["n_trials"] >= 1 and model is not None
    assert some["epochs"] == sum(t["epochs"] for t in some["trials"]) >= 1
    values = [v for _, v in some["curve"]]
    assert values == sorted(values) and max(values) == some["best_value"]


def test_subsample_is_balanced_round_robin_over_cells_and_keeps_all_of_test(make_dataset, tmp_path):
    root = make_dataset(classes=2, groups=5, per_group=4)
    subset = make_subset(root, tmp_path / "subset", files_per_class=7, groups_per_class=3)
    for cls in ("class0", "class1"):
        names = sorted(p.name for p in (subset / "TRAIN" / cls).iterdir())
        # one copy of each of the 3 cells, a second of each, then one more: 7 files
        assert names == sorted([f"_{g}_{n}.png" for n in range(2) for g in range(3)] + ["_0_2.png"])
        assert all(p.is_symlink() for p in (subset / "TRAIN" / cls).iterdir())
    assert sorted(p.name for p in (subset / "TEST" / "class0").iterdir()) == \
        sorted(p.name for p in (root / "TEST" / "class0").iterdir())
    split = prepare(subset, seed=0).split
    group = lambda path: (path.parent.name, path.name.split("_")[1])
    assert not {group(p) for p in split.train.files} & {group(p) for p in split.val.files}


def test_best_so_far_curve_and_time_to_target():
    curve = best_so_far([(5.0, 0.4), (2.0, 0.5), (9.0, 0.45), (12.0, 0.7), (7.0, None)])
    assert curve == [(2.0, 0.5), (12.0, 0.7)]
    assert time_to(curve, 0.5) == 2.0
    assert time_to(curve, 0.6) == 12.0
    assert time_to(curve, 0.71) is None


def test_time_to_target_ratio_is_only_claimed_as_far_as_the_runs_can_tell():
    from bench.report import ratio_verdict

    exact, bound = {"time_to_target_is_lower_bound": False}, {"time_to_target_is_lower_bound": True}
    assert ratio_verdict(3.0, exact, exact, 120)[0::2] == ("3.00×", "**met**")
    assert ratio_verdict(1.5, exact, exact, 120)[0::2] == ("1.50×", "**missed**")
    # KerasTuner mostly never reached the target: its median is the budget, the ratio only a lower bound
    assert ratio_verdict(1.03, exact, bound, 120)[0::2] == ("≥ 1.03×", "**not shown**")
    assert ratio_verdict(2.5, exact, bound, 120)[0::2] == ("≥ 2.50×", "**met**")
    # hematune mostly never reached it: an upper bound, which below 2× is enough to call the goal missed
    assert ratio_verdict(1.5, bound, exact, 120)[0::2] == ("≤ 1.50×", "**missed**")
    assert ratio_verdict(2.5, bound, exact, 120)[0::2] == ("≤ 2.50×", "**not shown**")
    assert ratio_verdict(1.0, bound, bound, 120)[0::2] == ("unknown", "**not shown**")
    assert ratio_verdict(None, exact, exact, 120)[2] == "—"


# --- section 6: training throughput -----------------------------------------------------------------------------

def test_augmentation_epoch_ratio_verdict():
    from bench.throughput import AUG_GOALS, aug_verdict

    assert AUG_GOALS[("jax", "cpu")] == 1.3 and AUG_GOALS[("jax", "gpu")] == 1.15  # issue 10's goals
    ratio, ok = aug_verdict(6.5, 5.0, 1.3)
    assert ratio == pytest.approx(1.3) and ok is True  # exactly at the goal is met
    assert aug_verdict(6.6, 5.0, 1.3)[1] is False
    assert aug_verdict(12.0, 6.4, None) == (pytest.approx(1.875), None)  # a ratio without a goal: no verdict
    assert aug_verdict(None, 5.0, 1.3) == (None, None)
    assert aug_verdict(5.0, 0.0, 1.3) == (None, None)


def test_mixed_precision_accuracy_verdict():
    from bench.throughput import accuracy_verdict

    assert accuracy_verdict(0.80, 0.79) == (pytest.approx(-0.01), True)
    assert accuracy_verdict(0.80, 0.78)[1] is True  # 2 points lower is the tolerance
    assert accuracy_verdict(0.80, 0.77)[1] is False
    assert accuracy_verdict(0.70, 0.75) == (pytest.approx(0.05), True)
    assert accuracy_verdict(None, 0.75) == (None, None)


def test_throughput_arms_pin_every_parameter_of_both_cnn_profiles():
    """An unpinned parameter would be sampled: the three arms would not be the same trial."""
    from bench.settings import THROUGHPUT_CPU_PARAMS, THROUGHPUT_GPU_PARAMS
    from search.space import PROFILE_DIRS

    for params, profile in ((THROUGHPUT_CPU_PARAMS, "cpu"), (THROUGHPUT_GPU_PARAMS, "gpu")):
        space = load_family_space("cnn", PROFILE_DIRS[profile])
        knobs = {name for section in space.values() for name in section} - {"max_epochs"}
        assert set(params) | {"aug_strength"} == knobs, profile


@pytest.mark.parametrize("quick, backend, device, name", [
    (False, "tensorflow", "cpu: 2 cores, AMD EPYC", "bench"),
    (True, "tensorflow", "cpu: 2 cores, AMD EPYC", "bench-quick"),
    (False, "jax", "cpu: 2 cores, AMD EPYC", "bench-jax"),
    (False, "jax", "gpu: NVIDIA H100 80GB HBM3", "bench-gpu"),
    (True, "jax", "gpu: NVIDIA H100 80GB HBM3", "bench-quick-gpu"),
])
def test_report_name_follows_mode_backend_and_device(quick, backend, device, name):
    from bench.run import _report_name

    assert _report_name(quick, backend, device) == name


def _arm(name, median, best, precision="float32"):
    return {"arm": name, "precision_run": precision, "first_epoch_s": 10.0, "steady_epoch_s": {
        "n": 3, "median": median, "min": median, "max": median}, "images_per_s": 8000 / median,
        "val_accuracy_per_epoch": [best - 0.1, best], "best_val_accuracy": best, "param_count": 77172}


def _backend(backend, device, plain, aug, mixed):
    return {"backend": backend, "device": device, "gpu": device.startswith("gpu:"), "params": {"image_size": 48},
            "epochs": 2, "train_images": 8000, "val_images": 2000,
            "arms": [_arm("no augmentation", plain, 0.8), _arm("augmentation 0.5", aug, 0.78),
                     _arm("mixed precision", mixed, 0.75, "mixed_bfloat16")]}


def test_throughput_report_states_verdicts_and_never_a_gpu_number_it_did_not_measure(tmp_path):
    from bench.report import section6

    cpu = {"data_root": "/data/blood-cells", "backends": {
        "tensorflow": _backend("tensorflow", "cpu: 2 cores", 10.0, 12.0, 20.0),
        "jax": _backend("jax", "cpu: 2 cores", 5.0, 7.0, 9.0)}}
    lines, head = section6(cpu, tmp_path, ".")
    text = "\n".join(lines)
    assert head["throughput_aug_jax_cpu"] == ("epoch with aug 0.5 ÷ epoch without, JAX · CPU", "≤ 1.3×",
                                              "1.40× (7.00 s vs 5.00 s)", "**missed**")
    assert head["throughput_aug_tensorflow_cpu"][1::2] == ("—", "—")  # a ratio, no goal for TensorFlow
    assert head["throughput_aug_gpu"][2] == "not measured: no GPU lent"
    assert "| GPU | all three | — | — | — | — | not measured: no GPU lent |" in text
    assert head["mixed_accuracy"][3] == "**missed**, **missed**"  # 5 points lower on both
    gpu = {"data_root": "/tmp/data/blood-cells", "backends": {
        "tensorflow": {"skipped": "tensorflow is not installed in this environment"},
        "jax": _backend("jax", "gpu: NVIDIA H100 80GB HBM3", 1.5, 1.6, 0.7)}}
    lines, head = section6(gpu, tmp_path, ".")
    text = "\n".join(lines)
    assert "not measured: no GPU lent" not in text and "throughput_aug_gpu" not in head
    assert head["throughput_aug_jax_gpu"][1:] == ("≤ 1.15×", "1.07× (1.60 s vs 1.50 s)", "**met**")
    assert "not measured: tensorflow is not installed" in text


def test_a_rerun_of_some_sections_keeps_where_the_others_came_from():
    from bench.run import _run_record, _section_runs

    old_meta = {"command": "make bench", "argv": ["run.py", "--sections", "4,5"], "git_commit": "b9f18e4",
                "git_dirty": False, "backend": "tensorflow", "device": "cpu: 2 cores"}
    legacy = {"meta": old_meta, "sections": {"1": {}, "5": {}}}  # stored before per-section records existed
    runs = _section_runs(legacy)
    assert set(runs) == {"1", "5"} and runs["1"]["git_commit"] == "b9f18e4"
    new = {**runs, "6": _run_record({**old_meta, "git_commit": "abc1234", "argv": ["run.py", "--sections", "6"]})}
    assert _section_runs({"meta": old_meta, "sections": {}, "section_runs": new}) == new
    assert _section_runs({}) == {}
