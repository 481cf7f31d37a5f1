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
