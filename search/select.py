"""`hematune select`: from the best trial to the best model that can be honestly claimed.

A search picks the trial whose *best epoch* scored highest on *one*
group-validation split of ~55 source cells: noisy, and optimistic (issue 11).
This step re-trains the study's TOP finalists on K group-aware folds of the
whole TRAIN pool (the search's train + validation parts, the study's own
grouping rule, every source cell validated exactly once), each for the epoch
count its trial chose, and scores each fold at that LAST epoch — never the
maximum over epochs, which is the optimism being removed. The winner (highest
CV mean; ties: lower sd, then the better search value) is then

* refit on all of TRAIN for its epoch count (``refit.keras``),
* its K fold models averaged into one model (``ensemble.keras``),
* that ensemble averaged over the 8 flips/quarter turns (``ensemble-tta.keras``),

and the five stages are written to ``stages.json`` (search/stages.py).

Optuna: the work is a linked study ``<study>-select`` in the same storage
(visible in optuna-dashboard), one trial per finalist, one reported step per
fold (``trial.report(fold_score, step=fold)``), pruned when a Wilcoxon
signed-rank test over the common folds says it is clearly worse than another
finalist (`FoldWilcoxonPruner`), or when the TIMEOUT budget must be kept for
the leader. Folds run round-robin (fold 0 of every finalist, then fold 1…)
so both can act early. K left unset is 5, or as few as 2 when the top
trial's 5 folds and refit would not fit the TIMEOUT by its search epoch times
(``auto_folds``). Folds and refit train on the trial's own learning-rate
schedule (search/objective.fit_phases) and stop at its chosen epoch.

Resumable: each finished fold leaves its model and a JSON with its score
(written after the model, atomically); a re-run reads them and trains only
what is missing. A trial left RUNNING by a killed process is marked failed
and its finalist gets a new trial that re-reports the folds already on disk,
so nothing is trained or counted twice. TEST is never listed nor read: only
the study's training pool is indexed (search/data.prepare). One select per
study runs at a time (``select.lock``).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from data_pipeline.cache import load_or_decode
from data_pipeline.files import replacing, write_atomic
from data_pipeline.ingest import ImageSet, fingerprint_change
from data_pipeline.split import group_kfold, resolve_groups
from search import keys
from search.budget import seconds_to_epoch
from search.data import SearchData, prepare
from search.errors import SearchConfigError
from search.layout import model_path, select_dir
from search.stages import RECOMMENDED, Stage, write_stages

SELECT_SUFFIX = "-select"
FOLDS_FILE = "folds.json"
P_THRESHOLD = 0.1  # Wilcoxon one-sided p below which a finalist is "clearly worse" than another
MIN_FOLDS_TO_PRUNE = 3  # never judge a finalist on fewer common folds
PRUNED_WORSE, PRUNED_BUDGET = "worse", "budget"


def select_study_name(study_name: str) -> str:
    return f"{study_name}{SELECT_SUFFIX}"


def fold_model_path(folder: Path, trial_number: int, fold: int) -> Path:
    return folder / f"fold-t{trial_number}-k{fold}.keras"


# --- pruning: Optuna's machinery, judged against the other finalists ---

class FoldWilcoxonPruner(optuna.pruners.BasePruner):
    """Prune a finalist that a one-sided Wilcoxon signed-rank test over the folds both have finished finds
    worse than another finalist of the same fold assignment (p < ``p_threshold``, at least ``min_folds`` common
    folds, and a lower mean on them). Unlike ``optuna.pruners.WilcoxonPruner``, which compares with the best
    *completed* trial only, this compares with running finalists too: folds run round-robin, so no finalist is
    complete until the last round."""

    def __init__(self, p_threshold: float = P_THRESHOLD, min_folds: int = MIN_FOLDS_TO_PRUNE):
        self.p_threshold, self.min_folds = p_threshold, min_folds

    def worse_than(self, mine: dict[int, float], other: dict[int, float]) -> float | None:
        """The p-value when ``mine`` is judged clearly worse than ``other``, else None."""
        from scipy.stats import wilcoxon

        common = sorted(set(mine) & set(other))
        if len(common) < max(2, self.min_folds):
            return None
        a, b = np.array([mine[s] for s in common]), np.array([other[s] for s in common])
        if a.mean() >= b.mean():
            return None
        p = float(wilcoxon(a - b, alternative="less", zero_method="zsplit").pvalue)
        return p if p < self.p_threshold else None

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        mine = dict(trial.intermediate_values)
        fold_hash = trial.user_attrs.get(keys.SELECT_FOLD_HASH)
        for other in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE)):
            if other.number == trial.number or other.user_attrs.get(keys.SELECT_FOLD_HASH) != fold_hash:
                continue
            if self.worse_than(mine, dict(other.intermediate_values)) is not None:
                return True
        return False


# --- the data: the whole TRAIN pool of the study, and its folds ---

@dataclass
class Pool:
    """The study's TRAIN pool (search train + validation parts), its groups and fold of every file."""

    data: SearchData
    images: ImageSet
    groups: tuple[str, ...]
    fold_of: np.ndarray  # (N,) fold index of each file
    folds_record: dict
    _arrays: dict = field(default_factory=dict)

    @property
    def fold_hash(self) -> str:
        return self.folds_record["hash"]

    def arrays(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pixels, labels, fold) of the usable images at ``size``; decoded from the search's cache entries."""
        if size not in self._arrays:
            pixels, labels, usable = [], [], []
            for part in (self.data.split.train, self.data.split.val):  # the search's own cache entries
                decoded = load_or_decode(part, size, self.data.cache_dir)
                pixels.append(decoded.pixels)
                labels.append(decoded.labels)
                usable.append(decoded.usable)
            keep = np.concatenate(usable)
            self._arrays[size] = (np.concatenate(pixels)[keep], np.concatenate(labels)[keep].astype(int),
                                  self.fold_of[keep])
        return self._arrays[size]


def make_pool(data: SearchData, groups_rule: str, folds: int, seed: int, parent: str) -> Pool:
    images = ImageSet(data.split.train.files + data.split.val.files,
                      data.split.train.labels + data.split.val.labels)
    groups = resolve_groups(groups_rule, data.index, images).groups
    fold_of = np.empty(len(images), dtype=int)
    for k, (_, val) in enumerate(group_kfold(images.labels, groups, folds, seed, data.classes)):
        fold_of[val] = k
    body = {"parent": parent, "folds": folds, "seed": seed, "split_rule": data.split.rule,
            "files": [[os.path.relpath(p, data.index.root), int(k)] for p, k in zip(images.files, fold_of)]}
    body["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return Pool(data, images, groups, fold_of, body)


# --- one training run: a fold or the refit ---

class _FoldProgress:
    """The live line of a training run, one per epoch: ``fold 2/5 · trial 12 · epoch 7/9 · val 0.871 · 41 s``."""

    def __init__(self, say, what: str, epochs: int):
        import keras

        class _Callback(keras.callbacks.Callback):
            def __init__(inner):
                super().__init__()
                inner.history: list[dict] = []
                inner.started = time.monotonic()

            def on_epoch_end(inner, epoch, logs=None):
                logs = logs or {}
                entry = {"epoch": epoch, "loss": float(logs.get("loss", math.nan)),
                         "accuracy": float(logs.get("accuracy", math.nan)),
                         "val_accuracy": float(logs.get("val_accuracy", math.nan)),
                         "val_loss": float(logs.get("val_loss", math.nan)),
                         "seconds": round(time.monotonic() - inner.started, 2)}
                inner.history.append(entry)
                val = f" · val {entry['val_accuracy']:.3f}" if "val_accuracy" in logs else ""
                say(f"  {what} · epoch {epoch + 1}/{epochs} · loss {entry['loss']:.3f} · "
                    f"acc {entry['accuracy']:.3f}{val} · {entry['seconds']:.0f} s")
                if not math.isfinite(entry["loss"]):
                    inner.model.stop_training = True

        self.callback = _Callback()


def _train(finalist: Finalist, x, y, val, num_classes: int, seed: int, weights: str | None, precision: str, say,
           what: str):
    """Build the finalist's configuration and train it for its epoch count; (model without augmentation,
    per-epoch history). ``val`` is (x_val, y_val) or None (the refit)."""
    import keras

    from models.common import without_augmentation
    from models.registry import build_model
    from search.callbacks import InterruptCheck
    from search.objective import fit_phases
    from search.precision import precision_policy

    keras.utils.set_random_seed(seed)
    with precision_policy(precision):
        built = build_model(finalist.family, finalist.params, num_classes=num_classes,
                            image_size=finalist.image_size, weights=weights, seed=seed)
        model = built.model
        progress = _FoldProgress(say, what, finalist.epochs)
        validation = None if val is None else (val[0], keras.utils.to_categorical(val[1], num_classes))
        fit_phases(model, built, finalist.params, x, keras.utils.to_categorical(y, num_classes),
                   max_epochs=finalist.max_epochs, epochs=finalist.epochs, validation=validation,
                   callbacks=[InterruptCheck(), progress.callback])
        history = progress.callback.history
        if not history or not math.isfinite(history[-1]["loss"]):
            raise SearchConfigError(f"trial {finalist.number}'s configuration: the loss became NaN in {what}; "
                                    "drop it with a smaller TOP or re-run the search")
        inference = without_augmentation(model)
    return inference, history


def _save_model(model, path: Path) -> None:
    with replacing(path) as tmp:
        model.save(tmp)


# --- the finalists ---

@dataclass
class Finalist:
    trial: FrozenTrial  # the searched trial
    rank: int  # 0: the study's best
    family: str
    params: dict
    image_size: int
    epochs: int  # the epoch count the trial chose (its best epoch): folds and refit stop there
    max_epochs: int  # the trial's epoch cap: the learning-rate schedule spans it, as in the trial
    seed: int
    scores: dict[int, float] = field(default_factory=dict)  # fold → val accuracy at the last epoch
    seconds: dict[int, float] = field(default_factory=dict)  # fold → training seconds
    live: optuna.Trial | None = None  # its trial in the select study, while running
    state: str = "running"  # running, complete, pruned
    reason: str = ""
    kind: str = ""  # PRUNED_WORSE or PRUNED_BUDGET when pruned
    pool_scale: float = 1.0  # images in the whole TRAIN pool ÷ images its search trial trained on

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores.values()) if self.scores else -math.inf

    @property
    def sd(self) -> float:
        return statistics.stdev(self.scores.values()) if len(self.scores) > 1 else 0.0

    def pool_cost(self) -> float:
        """Seconds its chosen epochs would take on the whole TRAIN pool, from its search trial's time to that
        epoch scaled by images (``pool_scale``): a fold of K trains on (K-1)/K of it, the refit on all."""
        # a trial from before epoch end times were recorded (2026-11-23) has no estimate: counted as 0 s, as before
        searched = seconds_to_epoch(self.trial, self.epochs) if self.trial.user_attrs.get(keys.EPOCH_END_SECONDS) else 0.0
        return searched * self.pool_scale

    def fold_cost(self, folds: int) -> float:
        """Seconds one of ``folds`` folds is expected to take: its own folds so far, else from ``pool_cost``."""
        if self.seconds:
            return statistics.fmean(self.seconds.values())
        return self.pool_cost() * (folds - 1) / folds


def _finalists(study: optuna.Study, top: int) -> list[Finalist]:
    from search.space import SearchSpace

    done = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None),
                  key=lambda t: (-t.value, t.number))
    if not done:
        raise SearchConfigError(f"STUDY={study.study_name}: no completed trial to select from; run or resume "
                                f"`make search STUDY={study.study_name}` first")
    space_record = study.user_attrs.get(keys.SPACE)
    if not space_record:
        raise SearchConfigError(f"STUDY={study.study_name}: the study does not record its search space (created by "
                                "an older hematune); select needs it to rebuild each finalist")
    space = SearchSpace(space_record["model"], space_record["families"])
    finalists = []
    for rank, trial in enumerate(done[:top]):
        # the space replayed on the trial's values gives the flat parameters, fixed (FIX=) ones included
        family, params = space.suggest(optuna.trial.FixedTrial(trial.params))
        best_epoch = trial.user_attrs.get(keys.BEST_EPOCH)
        epochs = int(best_epoch) + 1 if best_epoch is not None else int(trial.user_attrs.get(keys.EPOCHS_TRAINED, 0))
        if epochs < 1:
            raise SearchConfigError(f"STUDY={study.study_name}: trial {trial.number} records no epoch count; "
                                    "use a smaller TOP")
        seed = int(trial.user_attrs.get(keys.SEED, trial.number))
        max_epochs = max(epochs, int(trial.user_attrs.get(keys.MAX_EPOCHS) or epochs))
        finalists.append(Finalist(trial, rank, trial.user_attrs.get(keys.FAMILY, family), params,
                                  int(params["image_size"]), epochs, max_epochs, seed))
    return finalists


# --- the run ---

@dataclass
class SelectOutcome:
    stages: list[Stage]
    summary: dict
    path: Path  # stages.json


class _Say:
    def __init__(self, console):
        from rich.console import Console

        self.console = console or Console(highlight=False, soft_wrap=True)
        if not self.console.is_terminal:
            self.console.width = 140

    def __call__(self, text: str) -> None:
        from rich.markup import escape

        self.console.print(escape(text))


def _load_parent(study_name: str, storage_url: str):
    from search.storage import open_storage

    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise SearchConfigError(f"STUDY={study_name}: no such study in {storage_url}; run "
                                f"`make search STUDY={study_name}` first (or give its STORAGE=)") from None
    return storage, study


def _check_data(study: optuna.Study, data: SearchData) -> None:
    attrs = study.user_attrs
    changed = fingerprint_change(attrs[keys.DATA_FINGERPRINT], attrs.get(keys.DATA_FINGERPRINT_RULE),
                                 data.index.train, data.index.root, data.fingerprint)
    if changed:
        raise SearchConfigError(f"STUDY={study.study_name}: its data changed since the search ({changed}); "
                                "select on the data the study was searched on")
    if attrs.get(keys.SPLIT_RULE) != data.split.rule or (
            attrs.get(keys.SPLIT_HASH) and attrs[keys.SPLIT_HASH] != data.manifest()["hash"]):
        raise SearchConfigError(f"STUDY={study.study_name}: the split made now differs from the study's "
                                f"({attrs.get(keys.SPLIT_MANIFEST)}); give the study's DATA folder unchanged")


def _folds_file(folder: Path, pool: Pool) -> None:
    path = folder / FOLDS_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("hash") != pool.fold_hash:
            raise SearchConfigError(
                f"{path}: this study was cross-validated with FOLDS={old.get('folds')} and --seed "
                f"{old.get('seed')}; re-run with those, or remove {folder} to start over with new folds")
        return
    write_atomic(path, json.dumps(pool.folds_record, indent=1))


def _sweep_dead_writers(folder: Path) -> None:
    """Remove temporary files (data_pipeline/files.py names them ``.<stem>.tmp-<pid><suffix>``) of processes
    that no longer run: a select killed while saving a model leaves one."""
    for path in folder.glob(".*.tmp-*"):
        match = re.search(r"\.tmp-(\d+)", path.name)
        if not match:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


@contextlib.contextmanager
def _exclusive(folder: Path, study_name: str):
    """Hold ``select.lock`` in the select folder for the whole run. Two selects of one study would train the
    same folds twice and race on the stages; the second is refused. The kernel drops the lock when its
    holder dies, even by kill -9, so a crashed select never blocks the next one."""
    path = folder / "select.lock"
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SearchConfigError(f"STUDY={study_name}: another select of this study is running ({path} is "
                                    "locked); wait for it to finish, or stop it and re-run to resume") from None
        yield


def _fold_record_path(folder: Path, trial_number: int, fold: int) -> Path:
    return fold_model_path(folder, trial_number, fold).with_suffix(".json")


def _same_training(record: dict, finalist: Finalist, pool: Pool) -> bool:
    """Whether a stored fold or refit record was trained as ``finalist`` would be now (same folds, epochs,
    schedule): only then is it kept on resume."""
    from search.objective import LR_SCHEDULE

    return (record.get("source_trial"), record.get("fold_hash"), record.get("epochs"), record.get("max_epochs"),
            record.get("lr_schedule")) == (finalist.number, pool.fold_hash, finalist.epochs, finalist.max_epochs,
                                           LR_SCHEDULE)


def _read_done_folds(folder: Path, finalist: Finalist, pool: Pool, folds: int) -> None:
    for k in range(folds):
        record = _fold_record_path(folder, finalist.number, k)
        if record.is_file() and fold_model_path(folder, finalist.number, k).is_file():
            body = json.loads(record.read_text())
            if _same_training(body, finalist, pool):
                finalist.scores[k] = float(body["score"])
                finalist.seconds[k] = float(body["seconds"])


def _provenance(parent: optuna.Study, pool: Pool, finalist: Finalist, seed: int, **extra) -> dict:
    from search.environment import package_versions
    from search.objective import LR_SCHEDULE

    attrs = parent.user_attrs
    return {"parent_study": parent.study_name, "source_trial": finalist.number, "family": finalist.family,
            "params": finalist.params, "epochs": finalist.epochs, "max_epochs": finalist.max_epochs,
            "lr_schedule": LR_SCHEDULE, "folds": pool.folds_record["folds"],
            "fold_seed": pool.folds_record["seed"], "fold_hash": pool.fold_hash,
            "data_fingerprint": attrs.get(keys.DATA_FINGERPRINT), "split_rule": attrs.get(keys.SPLIT_RULE),
            "seed": seed, "versions": package_versions(), **extra}


def _open_select_study(storage, parent: optuna.Study, pool: Pool, finalists: list[Finalist], seed: int):
    study = optuna.create_study(study_name=select_study_name(parent.study_name), storage=storage,
                                direction="maximize", load_if_exists=True, pruner=FoldWilcoxonPruner(),
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    for key, value in {keys.SELECT_PARENT: parent.study_name, keys.SELECT_FOLDS: pool.folds_record["folds"],
                       keys.SELECT_FOLD_HASH: pool.fold_hash, keys.SELECT_SEED: seed,
                       keys.SPLIT_RULE: pool.data.split.rule}.items():
        study.set_user_attr(key, value)
    # a trial left RUNNING by a killed select: its folds are on disk and will be re-reported by a new trial
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)
    by_number = {f.number: f for f in finalists}
    for old in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        finalist = by_number.get(old.user_attrs.get(keys.SOURCE_TRIAL))
        if finalist is None or old.user_attrs.get(keys.SELECT_FOLD_HASH) != pool.fold_hash:
            continue
        if old.state == TrialState.COMPLETE and len(finalist.scores) == pool.folds_record["folds"]:
            finalist.state = "complete"
        elif old.state == TrialState.PRUNED and old.user_attrs.get(keys.SELECT_PRUNED_BY) == PRUNED_WORSE:
            finalist.state, finalist.kind = "pruned", PRUNED_WORSE
            finalist.reason = old.user_attrs.get(keys.PRUNE_REASON, "clearly worse")
    for finalist in finalists:
        if finalist.state != "running":
            continue
        trial = study.ask()
        trial.suggest_int("source_trial", finalist.number, finalist.number)  # its parameter in the dashboard
        for key, value in {keys.SOURCE_TRIAL: finalist.number, keys.FAMILY: finalist.family,
                           keys.FOLD_EPOCHS: finalist.epochs, keys.SELECT_FOLD_HASH: pool.fold_hash,
                           keys.SEARCH_VALUE: finalist.trial.value, keys.PARAMS: finalist.params}.items():
            trial.set_user_attr(key, value)
        for k, score in sorted(finalist.scores.items()):
            trial.report(score, step=k)
        finalist.live = trial
    return study


def _close(study: optuna.Study, finalist: Finalist) -> None:
    """Record a finalist's outcome on its select trial (once)."""
    trial, finalist.live = finalist.live, None
    if trial is None:
        return
    trial.set_user_attr(keys.FOLD_SCORES, {str(k): round(v, 5) for k, v in sorted(finalist.scores.items())})
    if finalist.scores:
        trial.set_user_attr(keys.CV_MEAN, round(finalist.mean, 5))
        trial.set_user_attr(keys.CV_SD, round(finalist.sd, 5))
    if finalist.state == "complete":
        study.tell(trial, finalist.mean)
    else:
        trial.set_user_attr(keys.PRUNE_REASON, finalist.reason)
        trial.set_user_attr(keys.SELECT_PRUNED_BY, finalist.kind)
        study.tell(trial, state=TrialState.PRUNED)


def _leader(finalists: list[Finalist]) -> Finalist:
    alive = [f for f in finalists if f.state != "pruned"]
    return max(alive, key=lambda f: (f.mean if f.scores else -1.0, -f.sd, -f.rank))


def _spent(finalists: list[Finalist]) -> float:
    return sum(sum(f.seconds.values()) for f in finalists)


def budget_stop(finalist: Finalist, finalists: list[Finalist], folds: int, timeout: float | None) -> str | None:
    """Why ``finalist`` must not start its next fold, or None: under a TIMEOUT, a finalist other than the current
    leader (best CV mean so far) may train a fold only if the leader's remaining folds and its refit (all of
    TRAIN: K/(K-1) of a fold) still fit after it. The leader itself always goes on: the select must end with
    one finalist cross-validated on every fold."""
    if timeout is None:
        return None
    leader = _leader(finalists)
    if finalist is leader:
        return None
    reserve = leader_cost(leader.fold_cost(folds), folds) - len(leader.scores) * leader.fold_cost(folds)
    if _spent(finalists) + finalist.fold_cost(folds) + reserve <= timeout:
        return None
    return (f"stopped by the TIMEOUT={timeout:.0f}s budget after {len(finalist.scores)} fold(s): the time left is "
            f"kept for the leader (trial {leader.number}, {folds - len(leader.scores)} fold(s) and the refit to go)")


MAX_AUTO_FOLDS, MIN_AUTO_FOLDS = 5, 2


def leader_cost(cost_per_fold: float, folds: int) -> float:
    """Seconds the leader's ``folds`` folds and its refit (all of TRAIN: K/(K-1) of a fold) take."""
    return folds * cost_per_fold + cost_per_fold * folds / (folds - 1)


def auto_folds(pool_cost: float, timeout: float | None) -> int:
    """FOLDS when the user gave none: 5, or the most folds (at least 2) whose leader folds and refit fit in
    TIMEOUT, so that the defaults keep to their budget on a slow machine. ``pool_cost``: seconds the leader's
    epochs take on the whole pool (K folds and the refit cost K of those). Decided from the study's own epoch
    times, so a resumed run decides the same."""
    if timeout is None or pool_cost <= 0:
        return MAX_AUTO_FOLDS
    for folds in range(MAX_AUTO_FOLDS, MIN_AUTO_FOLDS - 1, -1):
        if leader_cost(pool_cost * (folds - 1) / folds, folds) <= timeout:
            return folds
    return MIN_AUTO_FOLDS


def _recorded_folds(studies_dir: Path, study_name: str) -> int | None:
    path = select_dir(studies_dir, study_name) / FOLDS_FILE
    try:
        return int(json.loads(path.read_text())["folds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_select(study_name: str, storage_url: str, studies_dir: Path, top: int = 3, folds: int | None = None,
               seed: int = 0, timeout: float | None = None, data: str | None = None, console=None) -> SelectOutcome:
    """Cross-validate the study's TOP finalists on FOLDS group folds, refit and ensemble the winner, write
    the five stages. ``timeout``: seconds of training for the whole select (resumed runs count what is done).
    ``folds`` None: the folds an earlier run of this select used, else ``auto_folds``."""
    if top < 1:
        raise SearchConfigError(f"TOP={top}: must be at least 1")
    if folds is not None and folds < 2:
        raise SearchConfigError(f"FOLDS={folds}: cross-validation needs at least 2 folds")
    if timeout is not None and timeout <= 0:
        raise SearchConfigError(f"TIMEOUT={timeout}: must be a positive number of seconds")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # the select study's trials are asked and told here, not run by Study.optimize: no heartbeat to send
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    say = _Say(console)
    started = time.monotonic()

    from search.environment import device_description
    from search.precision import resolve_precision
    from search.runner import SearchConfig

    storage, parent = _load_parent(study_name, storage_url)
    attrs = parent.user_attrs
    settings = attrs.get(keys.WORKER_SETTINGS)
    if not settings or not attrs.get(keys.DATA_ROOT):
        raise SearchConfigError(f"STUDY={study_name}: the study does not record its settings (created by an older "
                                "hematune); select cannot rebuild its split")
    config = SearchConfig.from_record(settings, data=data or attrs[keys.DATA_ROOT], study=study_name,
                                      storage=storage_url, studies_dir=Path(studies_dir))
    finalists = _finalists(parent, top)
    search_data = prepare(config.data, groups=config.groups, val_fraction=config.val_fraction, seed=config.seed)
    _check_data(parent, search_data)
    pool_images = len(search_data.split.train.files) + len(search_data.split.val.files)
    for finalist in finalists:
        finalist.pool_scale = pool_images / max(1, len(search_data.split.train.files))
    folds_note = ""
    if folds is None:
        folds = _recorded_folds(studies_dir, study_name)
        folds_note = " (FOLDS of the run being resumed)" if folds else ""
    if folds is None:
        cost = finalists[0].pool_cost()
        folds = auto_folds(cost, timeout)
        if folds < MAX_AUTO_FOLDS:
            folds_note = (f" (auto: {MAX_AUTO_FOLDS} folds and the refit of trial {finalists[0].number} would take "
                          f"about {MAX_AUTO_FOLDS * cost:.0f} s by its search epochs, over TIMEOUT={timeout:.0f}s; "
                          f"FOLDS={MAX_AUTO_FOLDS} forces them)")
    pool = make_pool(search_data, config.groups, folds, seed, study_name)
    folder = select_dir(studies_dir, study_name)
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder, study_name):  # one select per study at a time
        _folds_file(folder, pool)
        _sweep_dead_writers(folder)
        for finalist in finalists:
            _read_done_folds(folder, finalist, pool, folds)
        precision = resolve_precision(config.precision, device_description())
        num_classes = len(search_data.classes)

        say(f"select {study_name} → study {select_study_name(study_name)} · {len(finalists)} finalist(s) "
            f"{', '.join(f'trial {f.number} ({f.trial.value:.4f}, {f.epochs} epochs)' for f in finalists)} · "
            f"{folds} group folds{folds_note} of {len(pool.images)} TRAIN images ({len(set(pool.groups))} groups, "
            f"{search_data.split.rule}) · fold hash {pool.fold_hash} · precision {precision}"
            + (f" · budget {timeout:.0f} s" if timeout else ""))
        select_study = _open_select_study(storage, parent, pool, finalists, seed)
        first = _leader(finalists)
        alone = leader_cost(first.fold_cost(folds), folds) - len(first.scores) * first.fold_cost(folds)
        if timeout is not None and _spent(finalists) + alone > timeout:
            say(f"warning: trial {first.number}'s {folds - len(first.scores)} fold(s) and refit alone need about "
                f"{alone:.0f} s (its search epochs), more than TIMEOUT={timeout:.0f}s leaves; they run anyway (the "
                "select needs one finalist on every fold), the other finalists get none")
        pruner = FoldWilcoxonPruner()

        try:
            for k in range(folds):  # round-robin: fold k of every finalist, then fold k+1
                for finalist in finalists:
                    if finalist.state != "running" or k in finalist.scores:
                        continue
                    too_late = budget_stop(finalist, finalists, folds, timeout)
                    if too_late:
                        finalist.state, finalist.kind, finalist.reason = "pruned", PRUNED_BUDGET, too_late
                        say(f"  → trial {finalist.number} {finalist.reason}")
                        _close(select_study, finalist)
                        continue
                    _run_fold(finalist, k, folds, pool, folder, parent, num_classes, config.weights, precision, say)
                    finalist.live.report(finalist.scores[k], step=k)
                    if finalist.live.should_prune():  # FoldWilcoxonPruner, the select study's pruner
                        finalist.state, finalist.kind = "pruned", PRUNED_WORSE
                        finalist.reason = _worse_reason(finalist, finalists, pruner)
                        say(f"  → trial {finalist.number} pruned: {finalist.reason}")
                        _close(select_study, finalist)
            for finalist in finalists:
                if finalist.state == "running":
                    finalist.state = "complete"
                    _close(select_study, finalist)
        except BaseException:
            for finalist in finalists:
                if finalist.live is not None:
                    select_study.tell(finalist.live, state=TrialState.FAIL)
                    finalist.live = None
            raise

        complete = [f for f in finalists if f.state == "complete"]
        if not complete:
            raise SearchConfigError(f"no finalist of {study_name} finished all {folds} folds; raise TIMEOUT and re-run "
                                    "`make select` (finished folds are kept)")
        winner = max(complete, key=lambda f: (f.mean, -f.sd, f.trial.value, -f.number))
        select_study.set_user_attr(keys.SELECT_WINNER, winner.number)
        _print_table(say, finalists, winner, folds)

        refit_path = _refit(winner, pool, folder, parent, num_classes, config.weights, precision, say)
        ensemble_path, tta_path = _ensembles(winner, pool, folder, parent, folds)
        stages, summary = _stages(parent, studies_dir, pool, finalists, winner, folds, seed, refit_path, ensemble_path,
                                  tta_path, say)
        summary["wall_seconds"] = round(time.monotonic() - started, 1)
        path = write_stages(studies_dir, study_name, stages, summary)
        say(f"stages: {path} · recommended stage {RECOMMENDED} · winner trial {winner.number} "
            f"(CV {winner.mean:.4f} ± {winner.sd:.4f}) · {summary['wall_seconds']:.0f} s")
        return SelectOutcome(stages, summary, path)


def _worse_reason(finalist: Finalist, finalists: list[Finalist], pruner: FoldWilcoxonPruner) -> str:
    for other in finalists:
        p = None if other is finalist else pruner.worse_than(finalist.scores, other.scores)
        if p is not None:
            return (f"clearly worse than trial {other.number} after {len(finalist.scores)} folds "
                    f"(mean {finalist.mean:.4f} vs {other.mean:.4f}, Wilcoxon p={p:.3f})")
    return f"clearly worse than another finalist after {len(finalist.scores)} folds (Wilcoxon p<{pruner.p_threshold})"


def _run_fold(finalist: Finalist, k: int, folds: int, pool: Pool, folder: Path, parent, num_classes: int,
              weights, precision: str, say) -> None:
    import keras

    x, y, fold_of = pool.arrays(finalist.image_size)
    train, val = fold_of != k, fold_of == k
    seed = (finalist.seed + 1_000_003 * (k + 1)) % 2**31
    what = f"fold {k + 1}/{folds} · trial {finalist.number}"
    started = time.monotonic()
    try:
        model, history = _train(finalist, x[train], y[train], (x[val], y[val]), num_classes, seed, weights, precision,
                                say, what)
        seconds = round(time.monotonic() - started, 2)
        score = history[-1]["val_accuracy"]  # at the chosen epoch count, not the best epoch: no optimism
        _save_model(model, fold_model_path(folder, finalist.number, k))
    finally:
        keras.backend.clear_session()
    record = _provenance(parent, pool, finalist, seed, fold=k, score=round(score, 5), seconds=seconds,
                         train_images=int(train.sum()), val_images=int(val.sum()),
                         val_accuracy_per_epoch=[round(h["val_accuracy"], 5) for h in history])
    write_atomic(_fold_record_path(folder, finalist.number, k), json.dumps(record, indent=1))  # the "done" mark
    finalist.scores[k], finalist.seconds[k] = score, seconds
    say(f"  → {what}: val {score:.4f} at epoch {finalist.epochs} (max over epochs "
        f"{max(h['val_accuracy'] for h in history):.4f}) · {seconds:.0f} s · "
        f"CV so far {finalist.mean:.4f} over {len(finalist.scores)} fold(s)")


def _refit(winner: Finalist, pool: Pool, folder: Path, parent, num_classes: int, weights, precision: str,
           say) -> Path:
    import keras

    path, record_path = folder / "refit.keras", folder / "refit.json"
    if path.is_file() and record_path.is_file():
        body = json.loads(record_path.read_text())
        if _same_training(body, winner, pool):
            say(f"refit: {path} already trained for trial {winner.number}; kept")
            return path
    x, y, _ = pool.arrays(winner.image_size)
    started = time.monotonic()
    try:
        model, history = _train(winner, x, y, None, num_classes, winner.seed, weights, precision, say,
                                f"refit · trial {winner.number} · all {len(x)} TRAIN images")
        _save_model(model, path)
    finally:
        keras.backend.clear_session()
    write_atomic(record_path, json.dumps(_provenance(
        parent, pool, winner, winner.seed, stage="refit", train_images=int(len(x)),
        seconds=round(time.monotonic() - started, 2),
        train_accuracy_per_epoch=[round(h["accuracy"], 5) for h in history]), indent=1))
    return path


def _ensembles(winner: Finalist, pool: Pool, folder: Path, parent, folds: int) -> tuple[Path, Path]:
    import keras

    import models  # noqa: F401  (registers hematune's layers for safe-mode loading)
    from models.ensemble import build_ensemble, with_tta

    members = [keras.saving.load_model(fold_model_path(folder, winner.number, k), compile=False, safe_mode=True)
               for k in range(folds)]
    ensemble = build_ensemble(members, name="ensemble")
    tta = with_tta(ensemble, name="ensemble_tta")
    paths = folder / "ensemble.keras", folder / "ensemble-tta.keras"
    for model, path, stage in ((ensemble, paths[0], "ensemble"), (tta, paths[1], "ensemble-tta")):
        _save_model(model, path)
        write_atomic(path.with_suffix(".json"), json.dumps(_provenance(
            parent, pool, winner, winner.seed, stage=stage, members=[
                fold_model_path(folder, winner.number, k).name for k in range(folds)]), indent=1))
    keras.backend.clear_session()
    return paths


def _stages(parent: optuna.Study, studies_dir: Path, pool: Pool, finalists: list[Finalist], winner: Finalist,
            folds: int, seed: int, refit_path: Path, ensemble_path: Path, tta_path: Path, say):
    best = finalists[0]  # the study's best trial as searched
    cv_kind = f"{folds}-fold group CV mean of trial {winner.number}'s configuration (val accuracy at epoch {winner.epochs})"
    val_groups = len(set(pool.groups[len(pool.data.split.train):]))  # the pool is the train part, then val
    searched = {"trial": best, "cv": winner}
    for stage, finalist in searched.items():
        path = model_path(studies_dir, parent.study_name, finalist.number)
        if not path.is_file():
            say(f"warning: stage {stage}: {path} is missing (the search keeps only its top KEEP_TOP trials' models); "
                "that row will have no TEST score")

    def stage(name, finalist, path, val, sd, kind, members):
        return Stage(name=name, model_path=Path(path).resolve(), source_trial=finalist.number,
                     family=finalist.family, image_size=finalist.image_size, params=dict(finalist.params),
                     val_score=None if val is None else round(float(val), 5),
                     val_sd=None if sd is None else round(float(sd), 5), val_kind=kind, members=members,
                     epochs=finalist.epochs)

    stages = [
        stage("trial", best, model_path(studies_dir, parent.study_name, best.number), best.trial.value, None,
              f"best-epoch group-validation accuracy of trial {best.number} (one split, {val_groups} source groups)", 1),
        stage("cv", winner, model_path(studies_dir, parent.study_name, winner.number), winner.mean, winner.sd,
              cv_kind, 1),
        stage("refit", winner, refit_path, winner.mean, winner.sd, cv_kind, 1),
        stage("ensemble", winner, ensemble_path, winner.mean, winner.sd, cv_kind, folds),
        stage("ensemble-tta", winner, tta_path, winner.mean, winner.sd, cv_kind, folds),
    ]
    summary = {
        "folds": folds, "parent_study": parent.study_name, "select_study": select_study_name(parent.study_name),
        "finalists": [{"trial": f.number, "search_value": f.trial.value, "cv_mean": round(f.mean, 5) if f.scores else None,
                       "cv_sd": round(f.sd, 5) if f.scores else None,
                       "fold_scores": [round(f.scores[k], 5) if k in f.scores else None for k in range(folds)],
                       "epochs": f.epochs, "pruned": f.state == "pruned", "pruned_reason": f.reason or None}
                      for f in finalists],
        "winner_trial": winner.number, "recommended": RECOMMENDED, "split_rule": pool.data.split.rule,
        "fold_hash": pool.fold_hash, "fold_seed": seed, "data_fingerprint": parent.user_attrs.get(keys.DATA_FINGERPRINT),
        "train_images": len(pool.images),
    }
    return stages, summary


def _print_table(say, finalists: list[Finalist], winner: Finalist, folds: int) -> None:
    say(f"{'trial':>6}  {'search val':>10}  {'epochs':>6}  {'CV mean ± sd':>17}  {'folds':>5}  fold scores / outcome")
    for f in finalists:
        scores = " ".join(f"{f.scores[k]:.3f}" if k in f.scores else "  –  " for k in range(folds))
        cv = f"{f.mean:.4f} ± {f.sd:.4f}" if f.scores else "–"
        outcome = "winner" if f is winner else (f"pruned: {f.reason}" if f.state == "pruned" else "")
        say(f"{f.number:>6}  {f.trial.value:>10.4f}  {f.epochs:>6}  {cv:>17}  {len(f.scores):>2}/{folds:<2}  "
            f"{scores}  {outcome}")
