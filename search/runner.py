"""The study runner: storage, sampler, pruner, budget, resume.

Re-running the same command resumes the study: completed trials are kept and
the budget continues — TRIALS counts finished (complete or pruned) trials of
the study, TIMEOUT counts the wall time its trials have already taken. A study
remembers its data fingerprint and search space; resuming it on other data or
with another space is refused rather than silently mixing the two.
"""
from __future__ import annotations

import logging
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from rich.markup import escape

from data_pipeline.ingest import fingerprint_change
from search import keys, preflight
from search.annotate import TrialAnnotator, annotate_study
from search.budget import BudgetGuard
from search.data import SearchData, prepare, write_manifest
from search.environment import device_description, gpu_unused_warning
from search.errors import SearchConfigError
from search.layout import split_manifest_path
from search.objective import SearchContext, objective
from search.precision import check_precision, resolve_precision
from search.progress import TerminalReporter
from search.pruning import PRUNERS, first_rung, make_pruner
from search.space import SearchSpace, load_space
from search.storage import default_storage, open_storage, retry_when_interrupted

STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class SearchConfig:
    data: str
    model: str = "cnn"
    study: str | None = None
    storage: str | None = None
    studies_dir: Path = Path("studies")
    trials: int = 20
    timeout: float | None = None
    max_epochs: int | None = None
    groups: str = "auto"
    val_fraction: float = 0.2
    seed: int = 0
    pruner: str = "hyperband"
    weights: str | None = None
    space_file: str | None = None
    fixed: dict = field(default_factory=dict)
    keep_top: int = 3
    max_consecutive_failures: int = 3
    # None: the sampler uses `seed`. Parallel workers each draw their own (search/workers.py): with one
    # shared seed they would all propose the same random start-up trials.
    sampler_seed: int | None = None
    precision: str = "auto"  # PRECISION=: auto, float32, mixed_bfloat16, mixed_float16 (search/precision.py)

    # What a study records of its settings when it is created, so that `hematune worker` can join it with
    # only STUDY and STORAGE and train exactly the same thing (search/workers.py). The rest — data path,
    # study, storage, budget, sampler seed — belongs to each run.
    RECORDED = ("model", "groups", "val_fraction", "seed", "pruner", "weights", "max_epochs", "keep_top",
                "precision")

    def to_record(self) -> dict:
        """The settings stored on the study (``worker_settings``)."""
        return {name: getattr(self, name) for name in self.RECORDED}

    @classmethod
    def from_record(cls, record: dict, **run_settings) -> SearchConfig:
        """The config a study recorded with :meth:`to_record`, plus this run's own settings (``data``, ``study``,
        ``trials``…), which also override a recorded one (a worker's ``--precision``). A setting an older
        study did not record keeps its default."""
        recorded = {name: record[name] for name in cls.RECORDED if name in record}
        return cls(**{**recorded, **run_settings})

    def study_name(self) -> str:
        if self.study:
            return self.study
        return re.sub(r"[^A-Za-z0-9._-]", "-", f"{self.model}-{Path(self.data).expanduser().resolve().name}")

    def storage_url(self) -> str:
        return self.storage or default_storage(self.studies_dir)


def check_config(config: SearchConfig) -> None:
    """Refuse impossible settings before anything is read or written."""
    for name, value in (("TRIALS", config.trials), ("MAX_EPOCHS", config.max_epochs), ("TIMEOUT", config.timeout),
                        ("KEEP_TOP", config.keep_top)):
        if value is not None and value <= 0:
            raise SearchConfigError(f"{name}={value}: must be a positive number")
    if not STUDY_NAME.match(config.study_name()):
        raise SearchConfigError(f"STUDY={config.study_name()}: use letters, digits, '.', '_' or '-' only "
                                "(no '/' or spaces), at most 100 characters")
    if config.pruner not in PRUNERS:
        raise SearchConfigError(f"PRUNER={config.pruner}: choose one of {', '.join(PRUNERS)}")
    check_precision(config.precision)


def _max_epochs(config: SearchConfig, space: SearchSpace) -> int:
    if config.max_epochs:
        return config.max_epochs
    caps = [int(f["training"].get("max_epochs", 10)) for f in space.families.values()]
    return max(caps)


def _check_resume(study: optuna.Study, data: SearchData, space: SearchSpace) -> None:
    attrs = study.user_attrs
    if not attrs.get(keys.SPACE_FINGERPRINT):
        return
    changed = fingerprint_change(attrs[keys.DATA_FINGERPRINT], attrs.get(keys.DATA_FINGERPRINT_RULE), data.index.train,
                                 data.index.root, data.fingerprint)
    if changed:
        raise SearchConfigError(f"STUDY={study.study_name}: was created on other data ({changed}); "
                                "use a new STUDY name for this data")
    if attrs[keys.SPACE_FINGERPRINT] != space.fingerprint:
        raise SearchConfigError(f"STUDY={study.study_name}: {space.change_from(attrs.get(keys.SPACE))}")
    if attrs.get(keys.SPLIT_RULE) != data.split.rule:
        raise SearchConfigError(f"STUDY={study.study_name}: was created with GROUPS rule {attrs.get(keys.SPLIT_RULE)}; "
                                "use the same GROUPS or a new STUDY name")


def open_study(config: SearchConfig, storage: RDBStorage, data: SearchData, space: SearchSpace,
               max_epochs: int) -> optuna.Study:
    sampler_seed = config.seed if config.sampler_seed is None else config.sampler_seed
    sampler = optuna.samplers.TPESampler(multivariate=True, group=True, seed=sampler_seed,
                                         n_startup_trials=5, constant_liar=True)
    study = optuna.create_study(study_name=config.study_name(), storage=storage, direction="maximize",
                                sampler=sampler, pruner=make_pruner(config.pruner, max_epochs), load_if_exists=True)
    _check_resume(study, data, space)
    if not study.user_attrs.get(keys.SPACE_FINGERPRINT):
        manifest_path = split_manifest_path(config.studies_dir, study.study_name)
        manifest = write_manifest(data, manifest_path)
        for key, value in {
            **data.summary(),
            keys.MODEL: config.model,
            keys.SPACE: space.as_dict(),
            keys.SPACE_FINGERPRINT: space.fingerprint,
            keys.SPLIT_HASH: manifest["hash"],
            keys.SPLIT_MANIFEST: str(manifest_path),
            keys.PRUNER: config.pruner,
            keys.SEED: config.seed,
            keys.WEIGHTS_POLICY: config.weights or "family default (imagenet for backbones)",
            # what `hematune worker` needs to join with only STUDY and STORAGE (search/workers.py)
            keys.WORKER_SETTINGS: config.to_record(),
            keys.CREATED: time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }.items():
            study.set_user_attr(key, value)
    return study


def spent_seconds(study: optuna.Study) -> float:
    """Wall time the study's finished trials took (the TIMEOUT budget already used)."""
    return sum(t.duration.total_seconds() for t in study.get_trials(deepcopy=False) if t.duration is not None)


def count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


class _StopAfterFailures:
    """Stop the run when several trials in a row fail: the cause is the setup, not bad luck."""

    def __init__(self, limit: int):
        self.limit, self.streak, self.last_reason = limit, 0, ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            self.streak += 1
            self.last_reason = trial.user_attrs.get(keys.FAIL_REASON, "")
            if self.streak >= self.limit:
                study.stop()
        else:
            self.streak = 0


def announce_device(config: SearchConfig, reporter: TerminalReporter) -> str:
    """Print the device, backend and precision trials will use (and a warning for an unused GPU); return
    the resolved precision."""
    import keras

    device = device_description()
    precision = resolve_precision(config.precision, device)
    reporter.line(escape(f"device {device} · backend {keras.backend.backend()} · precision {precision} "
                         f"(PRECISION={config.precision})"))
    warning = gpu_unused_warning(device)
    if warning:
        reporter.line(f"[yellow]warning:[/yellow] {escape(warning)}")
    return precision


@dataclass
class SearchOutcome:
    study: optuna.Study
    stopped_by_failures: str | None = None


def run_search(config: SearchConfig, reporter: TerminalReporter | None = None, console=None,
               space: SearchSpace | None = None) -> SearchOutcome:
    check_config(config)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # TPE group=True, heartbeats
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    # a failed or interrupted trial is reported in one line with its reason (progress, objective);
    # Optuna's own warning would add a traceback
    logging.getLogger("optuna.study._optimize").setLevel(logging.ERROR)
    reporter = reporter or TerminalReporter(None, console)
    precision = announce_device(config, reporter)  # the first line: where and in what precision trials train
    # a joining worker passes the space stored on the study (search/workers.py)
    space = space or load_space(config.model, space_file=config.space_file, fixed=config.fixed)
    preflight.check(space, config.weights)  # before any study is created or touched
    data = prepare(config.data, groups=config.groups, val_fraction=config.val_fraction, seed=config.seed)
    max_epochs = _max_epochs(config, space)
    storage = open_storage(config.storage_url())
    study = open_study(config, storage, data, space, max_epochs)
    annotate_study(study)  # the dashboard's study note, once
    reporter.study = study
    data.on_problems = lambda problems: reporter.line(
        f"[yellow]skipped {len(problems)} unusable image(s)[/yellow] (kept out of training): " + "; ".join(
            f"{path}: {why}" for path, why in list(problems.items())[:10]) + (" …" if len(problems) > 10 else ""))

    done = count(study, *FINISHED)
    remaining_trials = config.trials - done
    remaining_time = None if config.timeout is None else config.timeout - spent_seconds(study)
    reporter.line(
        f"[bold]study {study.study_name}[/bold] · {config.storage_url()} · {done} finished trial(s) so far\n"
        f"data {data.index.root} · {len(data.classes)} classes · train {len(data.split.train)} / "
        f"validation {len(data.split.val)} images · split {data.split.rule} · fingerprint {data.fingerprint}"
    )
    reporter.line(space.describe())  # which profile's file (CPU/GPU) or SPACE= this search samples from
    if remaining_trials <= 0:
        reporter.line(f"the study already has {done} finished trials (TRIALS={config.trials}); raise TRIALS to search more")
        return SearchOutcome(study)
    if remaining_time is not None and remaining_time <= 0:
        reporter.line(f"the study's TIMEOUT={config.timeout:.0f}s budget is spent; raise TIMEOUT to search more")
        return SearchOutcome(study)

    ctx = SearchContext(
        data=data, space=space, studies_dir=Path(config.studies_dir), weights=config.weights,
        max_epochs=config.max_epochs, seed=config.seed, keep_top=config.keep_top,
        deadline=None if remaining_time is None else time.time() + remaining_time, reporter=reporter,
        stop_not_learning=config.pruner != "none", precision=precision,
    )
    # no trial starts that the time left cannot take to its first pruning rung (search/budget.py)
    budget = None if ctx.deadline is None else BudgetGuard(ctx.deadline, first_rung(config.pruner, max_epochs))
    too_late = budget and budget.why_not_start(study.get_trials(deepcopy=False))
    if too_late:
        reporter.line(too_late)
        return SearchOutcome(study)
    failures = _StopAfterFailures(config.max_consecutive_failures)
    annotator = TrialAnnotator(data, Path(config.studies_dir), config.keep_top, warn=reporter.line)
    study.optimize(
        retry_when_interrupted(annotator.wrap(objective(ctx))), n_trials=None, timeout=remaining_time,
        catch=(Exception,), gc_after_trial=True,
        callbacks=[optuna.study.MaxTrialsCallback(config.trials, states=FINISHED), reporter.trial_finished, failures,
                   annotator.annotate_trial, *([budget] if budget else [])],
    )
    if budget and budget.stopped:
        reporter.line(budget.stopped)
    if data.problems:
        study.set_user_attr(keys.SKIPPED_IMAGES, dict(list(data.problems.items())[:200]))
    stopped = failures.last_reason if failures.streak >= failures.limit else None
    return SearchOutcome(study, stopped)
