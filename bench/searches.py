"""One hematune search for a benchmark, summarised as plain numbers and a best-so-far curve.

A real ``run_search`` in the bench's own storage and studies folder: the
same sampler, pruner, objective, storage writes and model files a user gets.
The curve's x is wall time since ``run_search`` was called (indexing, split
and study creation included), at the moment each completed trial was stored
— a completed trial is what hematune can select and hand over as a model.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from optuna.trial import TrialState

from bench.common import Paths, Stopwatch, best_so_far, quiet_console
from search import keys
from search.layout import model_path
from search.progress import TerminalReporter
from search.runner import SearchConfig, run_search


def hematune_search(root: Path, paths: Paths, study: str, *, image_size: int, max_epochs: int, seed: int = 0,
                    sampler_seed: int | None = None, pruner: str = "hyperband", trials: int = 10_000,
                    timeout: float | None = None, groups: str = "auto") -> dict:
    reporter = TerminalReporter(None, quiet_console(paths.logs / f"{study}.log"))
    config = SearchConfig(data=str(root), model="cnn", study=study, storage=paths.storage, studies_dir=paths.studies,
                          trials=trials, timeout=timeout, max_epochs=max_epochs, groups=groups, seed=seed,
                          sampler_seed=sampler_seed, pruner=pruner, fixed={"image_size": image_size})
    started = dt.datetime.now()
    with Stopwatch() as wall:
        outcome = run_search(config, reporter=reporter)
    study_obj = outcome.study
    trials_out, points = [], []
    for t in study_obj.get_trials(deepcopy=False):
        end = (t.datetime_complete - started).total_seconds() if t.datetime_complete else None
        trials_out.append({"number": t.number, "state": t.state.name, "value": t.value,
                           "epochs": t.user_attrs.get(keys.EPOCHS_TRAINED, 0),
                           "seconds": t.duration.total_seconds() if t.duration else None, "end_s": end,
                           "val_per_epoch": t.user_attrs.get(keys.VAL_ACCURACY_PER_EPOCH, []),
                           "not_learning": "not learning" in (t.user_attrs.get(keys.PRUNE_REASON) or "")})
        if t.state == TrialState.COMPLETE and t.value is not None:
            points.append((end, t.value))
    completed = [t for t in study_obj.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    best = max(completed, key=lambda t: (t.value, -t.number)) if completed else None
    model_file = model_path(paths.studies, study, best.number) if best else None
    return {
        "study": study, "wall_s": wall.seconds, "trials": trials_out, "curve": best_so_far(points),
        "epochs": sum(t["epochs"] for t in trials_out),
        "trial_seconds": sum(t["seconds"] or 0 for t in trials_out),
        "n_complete": len(completed), "n_pruned": sum(t["state"] == "PRUNED" for t in trials_out),
        "n_not_learning": sum(t["not_learning"] for t in trials_out),
        "n_failed": sum(t["state"] == "FAIL" for t in trials_out),
        "best_value": best.value if best else None, "best_trial": best.number if best else None,
        "best_epochs": best.user_attrs.get(keys.EPOCHS_TRAINED) if best else None,
        "model_file": str(model_file) if model_file and model_file.is_file() else None,
        "split_rule": study_obj.user_attrs.get(keys.SPLIT_RULE),
        "train_images": sum((study_obj.user_attrs.get(keys.TRAIN_COUNTS) or {}).values()),
        "val_images": sum((study_obj.user_attrs.get(keys.VAL_COUNTS) or {}).values()),
    }
