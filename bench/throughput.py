"""Section 6 — training throughput: epoch time and images/s of one fixed trial, per backend and arm.

Three arms of the same seeded CNN trial: no augmentation, augmentation at
strength 0.5, and mixed precision (no augmentation, so it is the first arm in
another dtype policy: the "accuracy not hurt" comparison). Each arm is a real
one-trial search (``run_search`` with every parameter pinned by FIX, PRECISION
per arm, no pruner): the model comes from ``models.registry.build_model`` and
is compiled and fitted by the objective, so what is timed is a hematune trial,
not a re-invented training loop. An epoch is timed from one epoch's end to the
next (training batches, the validation pass, every callback); the first epoch
includes tracing/XLA compilation and is reported apart.

Each Keras backend runs in its own process (``KERAS_BACKEND`` is read once, at
import), so one section run holds a TensorFlow and a JAX column:

    python -m bench.throughput --data ROOT --work DIR --out result.json [--quick]

is the child; :func:`run` is the parent the bench calls. A backend that is not
installed (TensorFlow on the lent GPU image) is recorded as skipped. When the
child's backend sees a GPU it trains the GPU-sized configuration
(``bench/settings.py``) and mixed precision is what ``PRECISION=auto`` picks
there; on a CPU the mixed arm asks for ``mixed_bfloat16`` explicitly (auto
would be float32).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Paths, loadavg, spread
from bench.settings import FULL, QUICK, THROUGHPUT_CPU_PARAMS, THROUGHPUT_GPU_PARAMS, Settings
from search import keys

# Issue 10's goals for "augmentation stays compiled": an epoch with aug_strength=0.5 takes at most this many
# times the epoch without. The CPU goal is set for JAX (XLA); TensorFlow's ratio is shown without a goal.
AUG_GOALS = {("jax", "cpu"): 1.3, ("jax", "gpu"): 1.15, ("tensorflow", "gpu"): 1.15}
ACCURACY_TOLERANCE = 0.02  # mixed precision "does not hurt" when its best val accuracy is within 2 points
BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax"}


def arms(mixed: str) -> list[dict]:
    """The three arms: name, parameter overrides, requested precision."""
    return [{"arm": "no augmentation", "aug_strength": 0.0, "precision": "float32"},
            {"arm": "augmentation 0.5", "aug_strength": 0.5, "precision": "float32"},
            {"arm": "mixed precision", "aug_strength": 0.0, "precision": mixed}]


def aug_verdict(aug_epoch_s: float | None, plain_epoch_s: float | None, goal: float | None):
    """(ratio of the augmented to the plain steady-state epoch, goal met?) — None where unknown or no goal."""
    if not aug_epoch_s or not plain_epoch_s:
        return None, None
    ratio = aug_epoch_s / plain_epoch_s
    return ratio, (None if goal is None else ratio <= goal + 1e-9)  # exactly at the goal counts as met


def accuracy_verdict(float32_best: float | None, mixed_best: float | None, tolerance: float = ACCURACY_TOLERANCE):
    """(mixed minus float32 best validation accuracy, not hurt?): not hurt = no more than ``tolerance`` lower."""
    if float32_best is None or mixed_best is None:
        return None, None
    delta = mixed_best - float32_best
    return delta, delta >= -tolerance - 1e-9  # exactly at the tolerance counts, whatever the float rounding


# --- child: one backend, three arms ---------------------------------------------------------------------------

def measure(settings: Settings, root: Path, work: Path) -> dict:
    """The three arms on this process's backend; plain numbers for results.json."""
    import keras

    from bench.common import quiet_console
    from bench.pipeline import EpochClock
    from search.data import prepare
    from search.environment import device_description
    from search.precision import resolve_precision
    from search.runner import SearchConfig, run_search

    device = device_description()
    gpu = device.startswith("gpu:")
    params = dict(THROUGHPUT_GPU_PARAMS if gpu else THROUGHPUT_CPU_PARAMS)
    mixed = resolve_precision("auto", device) if gpu else "mixed_bfloat16"
    backend = keras.backend.backend()
    paths = Paths(work, time.strftime("%Y%m%d-%H%M%S"))
    split = prepare(root, seed=0).split
    out = {"backend": backend, "device": device, "gpu": gpu, "params": params, "epochs": settings.training_epochs,
           "train_images": len(split.train), "val_images": len(split.val), "arms": []}
    for spec in arms(mixed):
        clock = EpochClock(quiet_console(paths.logs / f"throughput-{backend}.log"))
        config = SearchConfig(data=str(root), model="cnn", study=f"throughput-{backend}-{spec['arm'].replace(' ', '-')}",
                              storage=paths.storage, studies_dir=paths.studies, trials=1,
                              max_epochs=settings.training_epochs, fixed={**params, "aug_strength": spec["aug_strength"]},
                              pruner="none", seed=0, precision=spec["precision"])
        load = loadavg()
        outcome = run_search(config, reporter=clock)
        trial = outcome.study.trials[-1]
        if clock.started is None or not clock.ends:
            raise RuntimeError(f"{spec['arm']}: the trial trained no epoch ({trial.state.name}: "
                               f"{trial.user_attrs.get(keys.FAIL_REASON, '')})")
        first = clock.ends[0] - clock.started
        steady = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
        median = spread(steady)["median"]
        val = trial.user_attrs.get(keys.VAL_ACCURACY_PER_EPOCH, [])
        out["arms"].append({
            **spec, "precision_run": trial.user_attrs.get(keys.PRECISION, spec["precision"]), "state": trial.state.name,
            "first_epoch_s": first, "steady_epochs_s": steady, "steady_epoch_s": spread(steady),
            "images_per_s": out["train_images"] / median if median else None,
            "val_accuracy_per_epoch": val, "best_val_accuracy": max(val) if val else None,
            "param_count": trial.user_attrs.get(keys.PARAM_COUNT), "loadavg_before": load,
        })
    return out


def _child(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description="one backend's arms (section 6)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")  # library deprecation chatter; errors still raise
    result = measure(QUICK if args.quick else FULL, Path(args.data), Path(args.work))
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    return 0


# --- parent: one child per backend -----------------------------------------------------------------------------

def run(settings: Settings, paths: Paths, full_root: Path, search_root: Path, child_preallocate: str | None = None) -> dict:
    """Both backends, each in a fresh process; a backend that fails is recorded and the other still runs.

    ``child_preallocate``: the user's XLA_PYTHON_CLIENT_PREALLOCATE (None: unset), which the bench process itself
    overrides (bench/run.py); a child trains with what a user's search would get.
    """
    root = full_root if settings.training_full_train else search_root
    backends = {}
    for backend in settings.training_backends:
        if importlib.util.find_spec(BACKEND_MODULES[backend]) is None:
            backends[backend] = {"skipped": f"{backend} is not installed in this environment"}
            continue
        work = paths.work / f"throughput-{backend}"
        work.mkdir(parents=True, exist_ok=True)
        out, log = work / f"result-{paths.tag}.json", paths.logs / f"throughput-{backend}-process.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "bench.throughput", "--data", str(root), "--work", str(work), "--out", str(out)]
        env = dict(os.environ, KERAS_BACKEND=backend)
        env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
        if child_preallocate is not None:
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = child_preallocate
        with open(log, "a") as stream:
            done = subprocess.run(argv + (["--quick"] if settings.quick else []), env=env, stdout=stream,
                                  stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
        if done.returncode != 0 or not out.is_file():
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            backends[backend] = {"error": f"exit {done.returncode}: {tail[0][:300]} (log {log})"}
            continue
        backends[backend] = json.loads(out.read_text())
    return {"data_root": str(root), "backends": backends}


if __name__ == "__main__":
    sys.exit(_child())
