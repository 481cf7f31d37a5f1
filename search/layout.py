"""Where a study's files live under the studies folder (``--studies-dir``, default ``studies/``).

The one place for these path rules, Keras-free so that the dashboard, the
report and the trial runner all agree without importing a backend::

    <studies>/hematune.db                          default storage (search/storage.py: default_storage)
    <studies>/splits/<study>.json                  the split manifest: which file went where, by which rule
    <studies>/artifacts/<study>/trial-NNNNN.keras  the top-k trials' models (search/artifacts.py)
    <studies>/artifacts/<study>/dashboard/         the dashboard's figures (search/artifact_store.py)
    <studies>/artifacts/_uploads/                  files uploaded from the dashboard page
    <studies>/<study>/select/                      `hematune select`: fold models, refit, ensembles, stages.json

A trial's model file is derived from its number, so nothing in the storage
can point at a file that was since removed.
"""
from __future__ import annotations

from pathlib import Path


def artifacts_root(studies_dir: Path) -> Path:
    return Path(studies_dir) / "artifacts"


def artifacts_dir(studies_dir: Path, study_name: str) -> Path:
    return artifacts_root(studies_dir) / study_name


def model_path(studies_dir: Path, study_name: str, trial_number: int) -> Path:
    return artifacts_dir(studies_dir, study_name) / f"trial-{trial_number:05d}.keras"


def dashboard_dir(studies_dir: Path, study_name: str) -> Path:
    return artifacts_dir(studies_dir, study_name) / "dashboard"


def uploads_dir(studies_dir: Path) -> Path:
    return artifacts_root(studies_dir) / "_uploads"


def split_manifest_path(studies_dir: Path, study_name: str) -> Path:
    return Path(studies_dir) / "splits" / f"{study_name}.json"


def select_dir(studies_dir: Path, study_name: str) -> Path:
    """Where `hematune select` keeps a study's fold models, refit, ensembles, stages.json and folds.json."""
    return Path(studies_dir) / study_name / "select"
