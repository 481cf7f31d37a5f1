"""Section 2 — what the pruner saves: the same seeded search with and without it.

Same data, space, seed, trial count and epoch cap; only PRUNER differs
(``hyperband``, the default, versus ``none``). TPE sees different results once
trials are pruned, so after the start-up trials the two runs may propose
different parameters: this is the comparison a user makes by flipping PRUNER.
"""
from __future__ import annotations

from pathlib import Path

from bench.common import Paths, loadavg
from bench.searches import hematune_search
from bench.settings import Settings


def run(settings: Settings, paths: Paths, search_root: Path) -> dict:
    runs = []
    for seed in settings.pruning_seeds:
        pair = {"seed": seed, "loadavg_before": loadavg()}
        for pruner in ("hyperband", "none"):
            pair[pruner] = hematune_search(
                search_root, paths, f"pruning-{pruner}-s{seed}", image_size=settings.search_image_size,
                max_epochs=settings.search_max_epochs, seed=0, sampler_seed=seed, pruner=pruner,
                trials=settings.pruning_trials)
        pruned, full = pair["hyperband"], pair["none"]
        pair["epoch_saving"] = 1 - pruned["epochs"] / full["epochs"] if full["epochs"] else None
        pair["wall_saving"] = 1 - pruned["wall_s"] / full["wall_s"] if full["wall_s"] else None
        pair["accuracy_delta_points"] = ((pruned["best_value"] - full["best_value"]) * 100
                                         if pruned["best_value"] is not None and full["best_value"] is not None else None)
        runs.append(pair)
    return {"trials": settings.pruning_trials, "max_epochs": settings.search_max_epochs,
            "image_size": settings.search_image_size, "runs": runs}
