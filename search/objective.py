"""Train one trial: suggest → build → fit with per-epoch reporting → score at best epoch.

The score is the best epoch's group-validation accuracy and the model kept is
that epoch's weights. Pretrained backbones are fine-tuned in two phases: the
new head alone (backbone frozen) for ``warmup_epochs``, then the top
``unfreeze_fraction`` of the backbone too, at ``learning_rate *
finetune_lr_mult``. Each phase's learning rate follows a cosine decay to zero
over that phase's epochs of ``max_epochs``: at a constant rate a batch-norm
CNN's validation accuracy swung between the commonest-class rate and 0.8
from epoch to epoch while training accuracy climbed (12 epochs, seed 1:
last-epoch group-val 0.82, TEST 70.9 %); with the decay it settled
(0.80 → 0.89 → 0.82 → 0.96 → 0.97 over the last 5 epochs, TEST 85.5 %).
Everything a person needs to judge the trial later is
stored on it as user attributes.
"""
from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import keras
import optuna

from data_pipeline.errors import first_line
from models.common import unfreeze_top
from models.registry import build_model
from search import artifacts, keys
from search.callbacks import EpochReporter, InterruptCheck
from search.data import SearchData
from search.environment import device_description, package_versions
from search.precision import precision_policy
from search.space import SearchSpace

LR_SCHEDULE = "cosine decay to 0 over each phase"  # recorded with every select model; a change retrains them
MAX_TRACEBACK = 8000  # characters of a failed trial's traceback kept on it (its innermost frames)


class TrialFailed(RuntimeError):
    """A trial that cannot produce a model (NaN loss…); recorded as FAIL with this reason."""


@dataclass
class SearchContext:
    """Everything a trial needs that is the same for the whole run."""

    data: SearchData
    space: SearchSpace
    studies_dir: Path
    weights: str | None = None  # None: the family default (imagenet for backbones)
    max_epochs: int | None = None  # MAX_EPOCHS= overrides the space's max_epochs
    seed: int = 0
    keep_top: int = 3
    deadline: float | None = None  # time.time() by which trials stop: no epoch starts that would end after it
    reporter: object | None = None  # search.progress.TerminalReporter or None
    stop_not_learning: bool = True  # PRUNER=none turns this off too: no trial is stopped early
    precision: str = "float32"  # a resolved Keras dtype policy (search/precision.py), never "auto"


def compile_trial_model(model: keras.Model, params: dict, learning_rate: float | None = None,
                        decay_steps: int | None = None) -> None:
    """Compile ``model`` as a trial trains it: AdamW with the trial's weight decay, label-smoothed cross-entropy
    on one-hot labels, accuracy. The benchmarks call this too, so what they time is what a trial trains.
    ``learning_rate`` overrides the trial's (the fine-tuning phase trains at a fraction of it);
    ``decay_steps``: the rate decays along a cosine to zero over that many optimizer steps (a constant rate
    when None)."""
    lr = float(params["learning_rate"]) if learning_rate is None else learning_rate
    if decay_steps:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=int(decay_steps), alpha=0.0)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=lr, weight_decay=float(params.get("weight_decay", 1e-4))),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=float(params.get("label_smoothing", 0.0))),
        metrics=["accuracy"],
    )


def _phases(params: dict, built, max_epochs: int) -> list[tuple[int, int, float, float | None]]:
    """(first epoch, end epoch, learning rate, unfreeze fraction) per training phase."""
    lr = float(params["learning_rate"])
    fraction = float(params.get("unfreeze_fraction", 0.0))
    if built.backbone is None or fraction <= 0:
        return [(0, max_epochs, lr, None)]
    warmup = min(int(params.get("warmup_epochs", 1)), max_epochs)
    return [(0, warmup, lr, None), (warmup, max_epochs, lr * float(params.get("finetune_lr_mult", 0.1)), fraction)]


def fit_phases(model: keras.Model, built, params: dict, x, y_onehot, *, max_epochs: int, epochs: int | None = None,
               validation=None, callbacks=(), on_unfreeze=None) -> None:
    """Train ``model`` as a trial does: each phase compiled afresh with its learning rate decaying over the
    phase's span of ``max_epochs`` epochs. ``epochs`` (≤ max_epochs) stops earlier on the same schedule, so a
    select fold trained to a trial's chosen epoch sees the rates that trial saw. Stops when a callback sets
    ``model.stop_training``. ``on_unfreeze(count)`` hears how many backbone layers a fine-tuning phase opened."""
    epochs = max_epochs if epochs is None else min(epochs, max_epochs)
    batch_size = int(params.get("batch_size", 32))
    steps = math.ceil(len(x) / batch_size)
    for first, end, lr, fraction in _phases(params, built, max_epochs):
        stop = min(end, epochs)
        if first >= stop:
            continue
        if fraction is not None:
            unfrozen = unfreeze_top(built.backbone, fraction)
            if on_unfreeze:
                on_unfreeze(unfrozen)
        compile_trial_model(model, params, learning_rate=lr, decay_steps=(end - first) * steps)
        model.fit(x, y_onehot, batch_size=batch_size, epochs=stop, initial_epoch=first,
                  validation_data=validation, validation_batch_size=max(batch_size, 128),
                  callbacks=list(callbacks), shuffle=True, verbose=0)
        if model.stop_training:
            break


def run_trial(trial: optuna.Trial, ctx: SearchContext) -> float:
    started = time.monotonic()
    family, params = ctx.space.suggest(trial)
    max_epochs = int(ctx.max_epochs or params.get("max_epochs", 10))
    image_size = int(params["image_size"])
    seed = ctx.seed * 100_003 + trial.number
    keras.utils.set_random_seed(seed)
    num_classes = len(ctx.data.classes)

    trial.set_user_attr(keys.FAMILY, family)
    trial.set_user_attr(keys.SEED, seed)
    trial.set_user_attr(keys.MAX_EPOCHS, max_epochs)
    trial.set_user_attr(keys.BACKEND, keras.backend.backend())
    trial.set_user_attr(keys.DEVICE, device_description())
    trial.set_user_attr(keys.PRECISION, ctx.precision)
    trial.set_user_attr(keys.DATA_FINGERPRINT, ctx.data.fingerprint)
    trial.set_user_attr(keys.SPLIT_RULE, ctx.data.split.rule)
    trial.set_user_attr(keys.VERSIONS, package_versions())

    x_train, y_train, x_val, y_val = ctx.data.arrays(image_size)
    built = build_model(family, params, num_classes=num_classes, image_size=image_size, weights=ctx.weights, seed=seed)
    model = built.model
    trial.set_user_attr(keys.WEIGHTS_ORIGIN, built.weights_origin)
    trial.set_user_attr(keys.PARAM_COUNT, int(model.count_params()))
    if ctx.reporter:
        ctx.reporter.trial_started(trial, family, params, max_epochs)

    y_train_1h = keras.utils.to_categorical(y_train, num_classes)
    y_val_1h = keras.utils.to_categorical(y_val, num_classes)
    batch_size = int(params.get("batch_size", 32))
    reporter = EpochReporter(trial, deadline=ctx.deadline,
                             chance=ctx.data.chance_level() if ctx.stop_not_learning else None,
                             on_epoch=ctx.reporter.epoch_ended if ctx.reporter else None, started=started)
    callbacks = [InterruptCheck(), reporter] + (ctx.reporter.batch_callbacks(len(x_train), batch_size)
                                                if ctx.reporter else [])
    fit_phases(model, built, params, x_train, y_train_1h, max_epochs=max_epochs, validation=(x_val, y_val_1h),
               callbacks=callbacks, on_unfreeze=lambda count: trial.set_user_attr(keys.UNFROZEN_LAYERS, count))

    history = reporter.history
    trial.set_user_attr(keys.VAL_ACCURACY_PER_EPOCH, [round(h["val_accuracy"], 5) for h in history])
    trial.set_user_attr(keys.VAL_LOSS_PER_EPOCH, [round(h["val_loss"], 5) for h in history])
    trial.set_user_attr(keys.EPOCHS_TRAINED, len(history))
    trial.set_user_attr(keys.WALL_SECONDS, round(time.monotonic() - started, 2))
    trial.set_user_attr(keys.EPOCH_END_SECONDS, [h["seconds"] for h in history])  # what the TIMEOUT budget estimates from
    if reporter.best_epoch is not None:
        best = history[[h["epoch"] for h in history].index(reporter.best_epoch)]
        trial.set_user_attr(keys.BEST_EPOCH, reporter.best_epoch)
        trial.set_user_attr(keys.BEST_VAL_ACCURACY, round(best["val_accuracy"], 5))
        trial.set_user_attr(keys.BEST_VAL_LOSS, round(best["val_loss"], 5))

    if reporter.stop_reason == "nan":
        raise TrialFailed(f"loss became NaN at epoch {len(history)} (learning rate {params['learning_rate']:.2g} too high?)")
    if reporter.stop_reason in ("pruned", "not_learning"):
        why = ("behind other trials at the same epoch" if reporter.stop_reason == "pruned" else
               f"not learning: training accuracy at the commonest-class rate ({ctx.data.chance_level():.3f})")
        reason = f"pruned at epoch {len(history)}: val_accuracy {history[-1]['val_accuracy']:.3f}, {why}"
        trial.set_user_attr(keys.PRUNE_REASON, reason)
        raise optuna.TrialPruned(reason)
    if reporter.stop_reason == "deadline" and len(history) < max_epochs:
        # a one-epoch score is no finished trial: recorded as one, TPE would learn from it and the closing
        # table would list it beside complete ones (search/budget.py starts no trial that would end so early)
        reason = f"stopped by the TIMEOUT budget after epoch {len(history)}"
        trial.set_user_attr(keys.STOPPED_BY, reason)
        trial.set_user_attr(keys.PRUNE_REASON, reason)
        raise optuna.TrialPruned(reason)
    if not math.isfinite(reporter.best_value):
        raise TrialFailed("no epoch finished with a finite loss")

    reporter.restore_best()
    saved = artifacts.save_if_top(trial.study, ctx.studies_dir, trial.number, reporter.best_value, model, ctx.keep_top)
    trial.set_user_attr(keys.MODEL_SAVED, saved is not None)
    return reporter.best_value


def objective(ctx: SearchContext):
    """The Optuna objective: records why a trial failed before Optuna marks it FAIL."""
    def _objective(trial: optuna.Trial) -> float:
        try:
            with precision_policy(ctx.precision):  # build, train and save in it; the next trial starts clean
                return run_trial(trial, ctx)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {first_line(str(exc))}"[:500]
            trial.set_user_attr(keys.FAIL_REASON, reason)
            # the one line above is what a person scans; the whole traceback is what a maintainer debugs with
            trial.set_user_attr(keys.FAIL_TRACEBACK, traceback.format_exc()[-MAX_TRACEBACK:])
            if ctx.reporter:
                ctx.reporter.trial_failed(trial, reason)
            raise
        finally:
            keras.backend.clear_session()  # free the graph between trials
    return _objective
