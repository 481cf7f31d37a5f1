"""Section 3 — hematune (Optuna TPE + Hyperband pruning) versus KerasTuner, same wall budget.

Every method searches the same CNN space on the same TRAIN subsample and the
same group split, for the same wall budget, once per seed. Reported: the
best group-validation accuracy over time, the time each run needed to reach
a target (a fixed fraction of the best value any run reached — set before the
runs, computed after), and the TEST accuracy of the model each run selected.
"""
from __future__ import annotations

import statistics
from pathlib import Path

import keras

from bench.common import Paths, loadavg, test_score, time_to
from bench.kt_search import TUNERS, kt_search
from bench.searches import hematune_search
from bench.settings import Settings
from search.data import prepare
from search.space import load_family_space

METHODS = ("hematune", *TUNERS)


def run(settings: Settings, paths: Paths, search_root: Path, log=print) -> dict:
    size, max_epochs, budget = settings.search_image_size, settings.tuner_max_epochs, settings.tuner_budget_s
    data = prepare(search_root, seed=0)  # the split every method uses (hematune's own, seed 0)
    arrays = data.arrays(size)
    family_space = load_family_space("cnn", fixed={"image_size": size})
    runs = []
    for seed in settings.tuner_seeds:
        for method in METHODS:
            before = loadavg()
            if method == "hematune":
                result = hematune_search(search_root, paths, f"tuners-hematune-s{seed}", image_size=size,
                                         max_epochs=max_epochs, seed=0, sampler_seed=seed, pruner="hyperband",
                                         timeout=budget)
                result.update(method=method, seed=seed, n_trials=len(result["trials"]))
                model_file = result["model_file"]
            else:
                result, model = kt_search(method, arrays, len(data.classes), family_space, budget_s=budget,
                                          max_epochs=max_epochs, seed=seed, directory=paths.work / "kt")
                model_file = None
                if model is not None:
                    model_file = paths.work / "kt" / f"{method}-s{seed}-best.keras"
                    model.save(model_file)
                keras.backend.clear_session()
            result["loadavg_before"] = before
            result["test"] = test_score(Path(model_file), search_root, paths.work / "test" / f"{method}-s{seed}") \
                if model_file else None
            log(f"  {method} seed {seed}: best val {result['best_value']}, {result['epochs']} epochs, "
                f"{result['n_trials']} trials, TEST {result['test'] and round(result['test']['accuracy'], 4)}")
            runs.append(result)

    best_any = max((r["best_value"] for r in runs if r["best_value"] is not None), default=None)
    target = settings.target_fraction * best_any if best_any is not None else None
    for r in runs:
        r["time_to_target_s"] = time_to(r["curve"], target) if target is not None else None
    methods = {}
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        reached = [r["time_to_target_s"] for r in mine if r["time_to_target_s"] is not None]
        # a run that never reached the target counts as the whole budget (a lower bound on its time)
        bounded = [r["time_to_target_s"] if r["time_to_target_s"] is not None else budget for r in mine]
        tests = [r["test"]["accuracy"] for r in mine if r["test"]]
        methods[method] = {
            "seeds": len(mine), "reached": len(reached),
            "time_to_target_median_s": statistics.median(bounded) if bounded else None,
            "time_to_target_is_lower_bound": len(reached) * 2 <= len(mine),
            "best_val": [r["best_value"] for r in mine], "test": tests,
            "epochs": [r["epochs"] for r in mine], "trials": [r["n_trials"] for r in mine],
        }
    h, k = methods["hematune"]["time_to_target_median_s"], methods["kt-hyperband"]["time_to_target_median_s"]
    searched = [n for n, spec in {**family_space["training"], **family_space["model"]}.items() if isinstance(spec, dict)]
    return {"budget_s": budget, "n_hyperparameters": len(searched), "seeds": list(settings.tuner_seeds), "image_size": size, "max_epochs": max_epochs,
            "train_images": len(arrays[0]), "val_images": len(arrays[2]), "target_fraction": settings.target_fraction,
            "best_any": best_any, "target": target, "runs": runs, "methods": methods,
            "speedup_vs_kt_hyperband": (k / h) if h and k else None}
