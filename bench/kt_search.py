"""The same search in KerasTuner: Hyperband, BayesianOptimization and RandomSearch.

``CnnHyperModel.build(hp)`` declares every entry of the study's CNN space
(``studies/spaces/cnn.yaml`` with the bench's FIX applied) as a KerasTuner
hyperparameter of the same range and scale, and builds the model with
``models.registry.build_model`` — so both tools search the same space over
the same models, trained with the same optimizer, loss, data and split as a
hematune trial. KerasTuner's defaults are kept otherwise (Bayesian
optimisation starts with 3 × #hyperparameters random trials).

A wall budget like hematune's TIMEOUT: no new trial starts after the
deadline and a running one stops at the end of its epoch. The best-so-far
curve is recorded when each trial ends, as for hematune.
"""
from __future__ import annotations

import time
from pathlib import Path

import keras
import keras_tuner as kt

from bench.common import Stopwatch, best_so_far
from models.registry import build_model
from search.objective import compile_trial_model

TUNERS = {"kt-hyperband": kt.Hyperband, "kt-bayesian": kt.BayesianOptimization, "kt-random": kt.RandomSearch}


class CnnHyperModel(kt.HyperModel):
    def __init__(self, family_space: dict, num_classes: int, seed: int):
        super().__init__(name="cnn")
        self.entries = {**family_space["training"], **family_space["model"]}
        self.entries.pop("max_epochs", None)  # the tuner's epoch budget, not a model parameter
        self.num_classes, self.seed, self.builds = num_classes, seed, 0

    def params(self, hp: kt.HyperParameters) -> dict:
        params = {}
        for name, spec in self.entries.items():
            if not isinstance(spec, dict):
                params[name] = spec
            elif spec["type"] == "float":
                params[name] = hp.Float(name, float(spec["low"]), float(spec["high"]),
                                        sampling="log" if spec.get("log") else "linear")
            elif spec["type"] == "int":
                params[name] = hp.Int(name, int(spec["low"]), int(spec["high"]),
                                      sampling="log" if spec.get("log") else "linear")
            else:
                params[name] = hp.Choice(name, list(spec["choices"]))
        return params

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        params = self.params(hp)
        self.builds += 1
        seed = self.seed * 100_003 + self.builds
        keras.utils.set_random_seed(seed)
        model = build_model("cnn", params, num_classes=self.num_classes, image_size=int(params["image_size"]),
                            weights="none", seed=seed).model
        # as a hematune trial compiles it, but at a constant rate: a trial's cosine decay spans its epoch cap,
        # and KerasTuner decides each model's epochs itself
        compile_trial_model(model, params)
        return model

    def fit(self, hp, model, *args, **kwargs):
        batch_size = int(hp.get("batch_size")) if "batch_size" in hp.values else 32
        return model.fit(*args, batch_size=batch_size, validation_batch_size=max(batch_size, 128), **kwargs)


class _Deadline(keras.callbacks.Callback):
    """Stops a trial at the end of the epoch in which the budget ran out; counts epochs."""

    def __init__(self, deadline: float, counter: dict):
        super().__init__()
        self.deadline, self.counter = deadline, counter

    def __deepcopy__(self, memo):  # KerasTuner deep-copies callbacks per trial; keep one shared counter
        return self

    def on_epoch_end(self, epoch, logs=None):
        self.counter["epochs"] += 1
        if time.time() >= self.deadline:
            self.model.stop_training = True


def _budgeted(tuner_class):
    class Budgeted(tuner_class):
        """No new trial after the deadline; each ended trial's time and score recorded."""

        def setup_budget(self, deadline: float, started: float, counter: dict):
            self.deadline, self.started, self.counter, self.ended = deadline, started, counter, []

        def pre_create_trial(self):
            super().pre_create_trial()
            if time.time() >= self.deadline:
                self.oracle.max_trials = len(self.oracle.trials)  # the oracle's own stop signal

        def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
            # KerasTuner 1.4 imports tensorboard here on the TensorFlow backend even when no TensorBoard
            # callback is used; TensorFlow ≥ 2.20 no longer installs it. We use none, so nothing to configure.
            return None

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            self.ended.append({"trial": trial.trial_id, "end_s": time.perf_counter() - self.started,
                               "value": trial.score, "status": str(trial.status),
                               "epochs": self.counter["epochs"] - sum(e["epochs"] for e in self.ended)})

    Budgeted.__name__ = f"Budgeted{tuner_class.__name__}"
    return Budgeted


def kt_search(method: str, arrays, num_classes: int, family_space: dict, *, budget_s: float, max_epochs: int,
              seed: int, directory: Path) -> tuple[dict, keras.Model | None]:
    """One KerasTuner run on the given (x_train, y_train, x_val, y_val); returns (summary, best model)."""
    x_train, y_train, x_val, y_val = arrays
    y_train_1h = keras.utils.to_categorical(y_train, num_classes)
    y_val_1h = keras.utils.to_categorical(y_val, num_classes)
    hypermodel = CnnHyperModel(family_space, num_classes, seed)
    started = time.perf_counter()
    deadline = time.time() + budget_s
    counter = {"epochs": 0}
    common = dict(objective="val_accuracy", seed=seed, directory=str(directory), project_name=method,
                  overwrite=True, max_consecutive_failed_trials=3)
    cls = _budgeted(TUNERS[method])
    if method == "kt-hyperband":
        tuner = cls(hypermodel, max_epochs=max_epochs, factor=3, hyperband_iterations=1000, **common)
    else:
        tuner = cls(hypermodel, max_trials=100_000, **common)
    tuner.setup_budget(deadline, started, counter)
    fit_kwargs = {} if method == "kt-hyperband" else {"epochs": max_epochs}
    with Stopwatch() as wall:
        if budget_s > 0:  # (max_trials=0 would mean "no limit" to the oracle)
                tuner.search(x_train, y_train_1h, validation_data=(x_val, y_val_1h), shuffle=True, verbose=0,
                         callbacks=[_Deadline(deadline, counter)], **fit_kwargs)
    points = [(e["end_s"], e["value"]) for e in tuner.ended if e["value"] is not None]
    best_model = None
    best_value = max((v for _, v in points), default=None)
    if points:
        best_model = tuner.get_best_models(1)[0]
    summary = {"method": method, "seed": seed, "wall_s": wall.seconds + (wall.start - started),
               "trials": tuner.ended, "n_trials": len(tuner.ended), "epochs": counter["epochs"],
               "curve": best_so_far(points), "best_value": best_value}
    return summary, best_model
