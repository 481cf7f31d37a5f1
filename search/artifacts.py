"""Trial model files: only the top few trials keep one, so disk stays bounded.

Files live in ``<studies>/artifacts/<study>/trial-<number>.keras``
(`search.layout`); a trial's file is derived from its number, so nothing in
the storage can point at a file that was since removed. Writes go to a temporary name and are renamed
into place: a crash leaves either the old state or the whole new file, and
stale temporary files are swept on the next save.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import keras
import optuna

from data_pipeline.files import replacing
from models.common import without_augmentation
from search.layout import artifacts_dir, model_path

TMP_MAX_AGE_S = 6 * 3600  # a temporary file older than this belongs to a dead process
_TRIAL_FILE = re.compile(r"^trial-(\d+)\.keras$")


def top_trial_numbers(study: optuna.Study, keep: int, extra: tuple[int, float] | None = None) -> set[int]:
    """Numbers of the ``keep`` best completed trials, counting a running one given as (number, value)."""
    scored = [(t.value, -t.number, t.number) for t in study.get_trials(deepcopy=False,
              states=(optuna.trial.TrialState.COMPLETE,)) if t.value is not None]
    if extra is not None:
        scored.append((extra[1], -extra[0], extra[0]))
    return {number for _, _, number in sorted(scored, reverse=True)[:keep]}


def save_if_top(study: optuna.Study, studies_dir: Path, trial_number: int, value: float, model: keras.Model,
                keep: int) -> Path | None:
    """Save ``model`` if this trial is among the top ``keep``; prune files that no longer are."""
    top = top_trial_numbers(study, keep, extra=(trial_number, value))
    folder = artifacts_dir(studies_dir, study.study_name)
    folder.mkdir(parents=True, exist_ok=True)
    saved = None
    if trial_number in top:
        saved = model_path(studies_dir, study.study_name, trial_number)
        with replacing(saved) as tmp:
            without_augmentation(model).save(tmp)  # an inference file: no random layers left to misfire
    running = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    sweep(folder, top | running)  # a running trial of another worker may be about to finish in the top
    return saved


def sweep(folder: Path, keep_numbers: set[int]) -> None:
    """Remove model files of trials outside ``keep_numbers`` and stale temporary files."""
    now = time.time()
    for path in folder.iterdir():
        match = _TRIAL_FILE.match(path.name)
        if match and int(match.group(1)) not in keep_numbers:
            path.unlink(missing_ok=True)
        elif path.name.startswith(".") and ".tmp-" in path.name and now - path.stat().st_mtime > TMP_MAX_AGE_S:
            path.unlink(missing_ok=True)
