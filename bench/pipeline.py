"""Section 1 — input-pipeline overhead: a hematune trial's epochs versus a bare ``model.fit``.

Both arms train the same model (every parameter of the CNN space fixed) on
the same group split, batch size and epochs. The hematune arm is a real
one-trial search (``run_search``: storage, per-epoch ``trial.report``, best
weights kept, top-k model file, progress lines to a log); the bare arm calls
``model.fit`` on the training and validation arrays already in memory as
backend tensors. An epoch is timed from one epoch's end to the next, so epoch
1 (graph tracing) is reported separately from the steady-state epochs. The
arms alternate, so a slow drift of the machine hits both.

Cold versus warm start: the time to index, split and decode the images into
arrays with an empty decode cache (JPEG decoding) and with a populated one
(memory-mapped arrays read back).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from bench.common import Paths, Stopwatch, loadavg, quiet_console, spread
from bench.settings import OVERHEAD_PARAMS, Settings
from models.registry import build_model
from search.data import prepare
from search.objective import compile_trial_model
from search.progress import TerminalReporter
from search.runner import SearchConfig, run_search


class EpochClock(TerminalReporter):
    """The usual progress reporter, plus the wall time at each epoch end."""

    def __init__(self, console):
        super().__init__(None, console)
        self.started: float | None = None
        self.ends: list[float] = []

    def trial_started(self, trial, family, params, max_epochs):
        super().trial_started(trial, family, params, max_epochs)
        self.started = time.perf_counter()

    def epoch_ended(self, epoch, logs, reporter):
        super().epoch_ended(epoch, logs, reporter)
        self.ends.append(time.perf_counter())


class _EpochEnds(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.perf_counter())


def _epochs(start: float, ends: list[float]) -> tuple[float, list[float]]:
    """(first epoch seconds, steady-state epoch seconds)."""
    first = ends[0] - start
    return first, [b - a for a, b in zip(ends, ends[1:])]


def hematune_arm(root: Path, paths: Paths, settings: Settings, rep: int) -> dict:
    clock = EpochClock(quiet_console(paths.logs / "overhead.log"))
    config = SearchConfig(data=str(root), model="cnn", study=f"overhead-{rep}", storage=paths.storage,
                          studies_dir=paths.studies, trials=1, max_epochs=settings.overhead_epochs,
                          fixed=dict(OVERHEAD_PARAMS), pruner="none", seed=0)
    with Stopwatch() as total:
        outcome = run_search(config, reporter=clock)
    trial = outcome.study.trials[-1]
    first, steady = _epochs(clock.started, clock.ends)
    return {"first_epoch_s": first, "steady_epochs_s": steady, "trial_s": trial.duration.total_seconds(),
            "run_search_s": total.seconds, "state": trial.state.name}


def bare_arm(arrays, num_classes: int, settings: Settings) -> dict:
    """The same model and data, ``model.fit`` on tensors already in memory; nothing else."""
    x_train, y_train, x_val, y_val = arrays
    params = OVERHEAD_PARAMS
    tensors = [keras.ops.convert_to_tensor(x_train), keras.ops.convert_to_tensor(
        keras.utils.to_categorical(y_train, num_classes)), keras.ops.convert_to_tensor(x_val),
        keras.ops.convert_to_tensor(keras.utils.to_categorical(y_val, num_classes))]
    with Stopwatch() as total:
        keras.utils.set_random_seed(0)
        model = build_model("cnn", params, num_classes=num_classes, image_size=params["image_size"], seed=0).model
        steps = -(-len(x_train) // params["batch_size"])  # the trial's cosine decay over these epochs
        compile_trial_model(model, params, decay_steps=settings.overhead_epochs * steps)
        clock = _EpochEnds()
        start = time.perf_counter()
        model.fit(tensors[0], tensors[1], batch_size=params["batch_size"], epochs=settings.overhead_epochs,
                  validation_data=(tensors[2], tensors[3]), validation_batch_size=max(params["batch_size"], 128),
                  callbacks=[clock], shuffle=True, verbose=0)
    keras.backend.clear_session()
    first, steady = _epochs(start, clock.ends)
    return {"first_epoch_s": first, "steady_epochs_s": steady, "trial_s": total.seconds}


def decode_times(root: Path, settings: Settings, size: int) -> dict:
    """Index + split + decode into arrays: empty cache (cold) vs populated cache (warm)."""
    cold, warm, images = [], [], 0
    for rep in range(settings.decode_cold_reps):
        with tempfile.TemporaryDirectory(prefix="hematune-bench-cache-") as cache:
            with Stopwatch() as sw:
                arrays = prepare(root, seed=0, cache_dir=Path(cache)).arrays(size)
            cold.append(sw.seconds)
            images = len(arrays[0]) + len(arrays[2])
            del arrays
            if rep == 0:  # warm: a new run (new SearchData) on the cache the cold run filled
                for _ in range(settings.decode_warm_reps):
                    with Stopwatch() as sw:
                        prepare(root, seed=0, cache_dir=Path(cache)).arrays(size)
                    warm.append(sw.seconds)
    return {"images": images, "size": size, "cold_s": spread(cold), "warm_s": spread(warm),
            "cold_runs": cold, "warm_runs": warm}


def run(settings: Settings, paths: Paths, full_root: Path, search_root: Path) -> dict:
    root = full_root if settings.overhead_full_train else search_root
    size = OVERHEAD_PARAMS["image_size"]
    load_before = loadavg()
    decode = decode_times(root, settings, size)
    data = prepare(root, seed=0)  # HEMATUNE_CACHE: the bench's own cache, populated by the warm-up below
    arrays = data.arrays(size)
    hematune, bare = [], []
    for rep in range(settings.overhead_reps):
        hematune.append(hematune_arm(root, paths, settings, rep))
        bare.append(bare_arm(arrays, len(data.classes), settings))
    per_rep = lambda runs: [float(np.median(r["steady_epochs_s"])) for r in runs if r["steady_epochs_s"]]
    h_steady, b_steady = spread(per_rep(hematune)), spread(per_rep(bare))
    h_trial, b_trial = spread([r["trial_s"] for r in hematune]), spread([r["trial_s"] for r in bare])
    ratio = lambda a, b: (a["median"] / b["median"] - 1) if a["median"] and b["median"] else None
    return {
        "data_root": str(root), "train_images": len(arrays[0]), "val_images": len(arrays[2]),
        "params": OVERHEAD_PARAMS, "epochs": settings.overhead_epochs, "reps": settings.overhead_reps,
        "hematune": hematune, "bare": bare,
        "steady_epoch_s": {"hematune": h_steady, "bare": b_steady},
        "first_epoch_s": {"hematune": spread([r["first_epoch_s"] for r in hematune]),
                          "bare": spread([r["first_epoch_s"] for r in bare])},
        "trial_s": {"hematune": h_trial, "bare": b_trial},
        "per_rep_overhead": [h / b - 1 for h, b in zip(per_rep(hematune), per_rep(bare))],
        "epoch_overhead": ratio(h_steady, b_steady), "trial_overhead": ratio(h_trial, b_trial),
        "decode": decode, "loadavg": [load_before, loadavg()],
    }
