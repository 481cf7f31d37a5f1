"""The stages from "best trial as searched" to "the model to release", as `hematune select` records them.

One row per stage, in the report's order (``STAGES``): the search's best trial,
the configuration chosen by group K-fold cross-validation, that configuration
refit on all of TRAIN, the ensemble of its K fold models, and that ensemble
with test-time augmentation. ``RECOMMENDED`` is fixed before any TEST score
exists, so the stage a report calls "chosen" is never picked on TEST.

``stages.json`` in ``search.layout.select_dir`` is the stored format: the
select step writes it (``write_stages``), the report and promote read it
(``load_stages``). Keras-free.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_pipeline.files import write_atomic
from search.errors import SearchConfigError
from search.layout import select_dir

STAGES = ("trial", "cv", "refit", "ensemble", "ensemble-tta")  # the order of the report's rows
RECOMMENDED = "ensemble-tta"  # the stage select recommends, fixed a priori (never chosen on TEST)
STAGES_FILE = "stages.json"
FORMAT_VERSION = 1


class NoSelectionError(SearchConfigError):
    """A study that `hematune select` has not run on (or whose results are unreadable)."""


@dataclass(frozen=True)
class Stage:
    name: str  # one of STAGES
    model_path: Path  # absolute path of the .keras file
    source_trial: int  # the search trial whose configuration it is
    family: str
    image_size: int
    params: dict = field(hash=False)  # the configuration (trial params)
    val_score: float | None  # trial: its best-epoch group-val accuracy; the others: the CV mean of the winner
    val_sd: float | None  # sd over folds (None for "trial")
    val_kind: str  # one line saying what val_score is
    members: int  # 1, or K for the ensembles
    epochs: int  # epochs it was trained for

    def to_dict(self) -> dict:
        body = asdict(self)
        body["model_path"] = str(self.model_path)
        return body

    @classmethod
    def from_dict(cls, body: dict) -> Stage:
        body = dict(body)
        body["model_path"] = Path(body["model_path"])
        return cls(**body)


def stages_path(studies_dir: Path, study_name: str) -> Path:
    return select_dir(studies_dir, study_name) / STAGES_FILE


def write_stages(studies_dir: Path, study_name: str, stages: list[Stage], summary: dict) -> Path:
    """Write ``stages.json`` atomically; return its path. ``stages`` must be one per name of STAGES, in order."""
    names = tuple(stage.name for stage in stages)
    if names != STAGES:
        raise ValueError(f"stages must be {STAGES} in that order, got {names}")
    path = stages_path(studies_dir, study_name)
    body = {"format": FORMAT_VERSION, "study": study_name, "recommended": RECOMMENDED,
            "stages": [stage.to_dict() for stage in stages], "summary": summary}
    write_atomic(path, json.dumps(body, indent=2, sort_keys=False) + "\n")
    return path


def load_stages(studies_dir: Path, study_name: str) -> tuple[list[Stage], dict]:
    """The stages and the summary `hematune select` wrote for ``study_name``; one-line error when there are none."""
    path = stages_path(studies_dir, study_name)
    if not path.is_file():
        raise NoSelectionError(
            f"study {study_name} has no selection results ({path} is missing): "
            f"run `make select STUDY={study_name}` first")
    try:
        body = json.loads(path.read_text())
        stages = [Stage.from_dict(entry) for entry in body["stages"]]
        summary = dict(body["summary"])
    except (ValueError, KeyError, TypeError) as exc:
        raise NoSelectionError(
            f"{path} is unreadable ({exc.__class__.__name__}): run `make select STUDY={study_name}` again") from None
    return stages, summary
