"""Read a finished, running or interrupted study back: trials, model files, TEST.

A study records where its data lives, the data fingerprint and its split
manifest; from those the TEST part is found again — the data set's own TEST
folder, or, for a flat folder, the files the split set aside. The training
pool's fingerprint is checked first: if the data changed since the search, no
TEST number computed now would belong to the study, so we refuse.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from data_pipeline import DataError
from data_pipeline.ingest import ImageSet, fingerprint, fingerprint_change, scan
from reports.errors import ReportError
from search import keys
from search.layout import model_path


@dataclass
class StudyView:
    """A loaded study plus where its files live."""

    study: optuna.Study
    studies_dir: Path
    storage_url: str

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def attrs(self) -> dict:
        return self.study.user_attrs

    @property
    def classes(self) -> list[str]:
        return list(self.attrs.get(keys.CLASSES) or [])

    def trials(self, *states: TrialState) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states or None)

    def completed(self) -> list[FrozenTrial]:
        """Completed trials, best first (ties: earlier trial first)."""
        done = [t for t in self.trials(TrialState.COMPLETE) if t.value is not None]
        return sorted(done, key=lambda t: (-t.value, t.number))

    def model_file(self, trial: FrozenTrial) -> Path | None:
        path = model_path(self.studies_dir, self.name, trial.number)
        return path if path.is_file() else None

    def trial(self, ref: str | int = "best") -> FrozenTrial:
        """``best`` (highest group-validation accuracy) or a trial number."""
        completed = self.completed()
        if not completed:
            raise ReportError(f"STUDY={self.name}: no completed trial yet; run or resume the search first")
        if str(ref) == "best":
            return completed[0]
        try:
            number = int(ref)
        except ValueError:
            raise ReportError(f"TRIAL={ref}: use best or a trial number") from None
        for trial in self.trials():
            if trial.number == number:
                if trial.state != TrialState.COMPLETE:
                    raise ReportError(f"TRIAL={number}: trial is {trial.state.name.lower()}, not complete")
                return trial
        raise ReportError(f"TRIAL={number}: study {self.name} has no such trial (0…{len(self.trials()) - 1})")

    def require_model(self, trial: FrozenTrial) -> Path:
        path = self.model_file(trial)
        if path is None:
            kept = [t.number for t in self.completed() if self.model_file(t)]
            raise ReportError(f"TRIAL={trial.number}: no model file kept (only the top trials keep one); "
                              f"trials with a model: {', '.join(map(str, kept)) or 'none'}")
        return path


def load(study_name: str | None, storage: str | None = None, studies_dir: Path = Path("studies")) -> StudyView:
    """Open an existing study; never creates a database or a study."""
    from search.storage import default_storage, open_storage  # its error messages for bad URLs

    if not study_name:
        raise ReportError("STUDY= is required, e.g. make report STUDY=cnn-blood-cells")
    url = storage or default_storage(studies_dir)
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        if not db.is_file():
            raise ReportError(f"STORAGE={url}: no study database at {db}; run a search first or set STORAGE/--studies-dir")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # optuna's deprecation notices about the storage's retry callback
        warnings.simplefilter("ignore")
        storage_obj = open_storage(url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage_obj)
    except KeyError:
        names = optuna.get_all_study_names(storage_obj)
        raise ReportError(f"STUDY={study_name}: not in {url}; studies there: {', '.join(names) or 'none'}") from None
    return StudyView(study, Path(studies_dir), url)


def data_root(view: StudyView, override: str | os.PathLike | None = None) -> Path:
    root = Path(override or view.attrs.get(keys.DATA_ROOT) or "")
    if not str(root) or not root.is_dir():
        raise ReportError(f"DATA={root}: the study's data folder is not there; pass --data with its new place")
    return root


def check_data_unchanged(view: StudyView, root: Path) -> None:
    """Refuse when the training pool differs from the one the study searched on."""
    try:
        index = scan(root, read_test=False)
    except DataError as exc:
        raise ReportError(str(exc)) from None
    then = view.attrs.get(keys.DATA_FINGERPRINT)
    changed = then and fingerprint_change(then, view.attrs.get(keys.DATA_FINGERPRINT_RULE), index.train, index.root,
                                          fingerprint(index.train, index.root))
    if changed:
        raise ReportError(f"DATA={root}: changed since study {view.name} ran ({changed}); "
                          "TEST numbers would not belong to this study")


def test_images(view: StudyView, root: Path) -> ImageSet:
    """The study's TEST part: the TEST folder, or the flat layout's held-out files."""
    classes = view.classes
    if view.attrs.get(keys.LAYOUT) == "train_test":
        try:
            index = scan(root, read_test=True)
        except DataError as exc:
            raise ReportError(str(exc)) from None
        if list(index.classes) != classes:
            raise ReportError(f"DATA={root}: classes {list(index.classes)} differ from the study's {classes}")
        return index.test
    manifest_path = Path(view.attrs.get(keys.SPLIT_MANIFEST) or "")
    if not manifest_path.is_file():
        raise ReportError(f"{manifest_path}: the study's split manifest is missing; it lists the flat layout's TEST files")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("hash") != view.attrs.get(keys.SPLIT_HASH):
        raise ReportError(f"{manifest_path}: does not match the study's split (hash {manifest.get('hash')} ≠ "
                          f"{view.attrs.get(keys.SPLIT_HASH)})")
    files, labels = [], []
    for rel in manifest.get("test") or []:
        cls = Path(rel).parts[0]
        if cls not in classes:
            raise ReportError(f"{manifest_path}: test file {rel} is in no known class folder")
        files.append(root / rel)
        labels.append(classes.index(cls))
    if not files:
        raise ReportError(f"{manifest_path}: lists no TEST files")
    return ImageSet(tuple(files), tuple(labels))


def test_groups(view: StudyView, test: ImageSet, root: Path) -> tuple[list[str], str]:
    """Source group of every TEST file under the study's grouping rule, and how they were found.

    Copies of one source cell are right or wrong together, so the TEST
    confidence interval resamples these groups. If the rule cannot be applied
    to TEST (e.g. a CSV that lists TRAIN only), every file is its own group and
    the report says so.
    """
    from data_pipeline.ingest import DataIndex
    from data_pipeline.split import resolve_groups

    described = str(view.attrs.get(keys.SPLIT_RULE) or "none")
    if described.startswith("filename:"):
        rule = described.removesuffix(" (auto)")
    elif described.startswith("csv:"):
        rule = described
    else:
        return [str(f) for f in test.files], "each file its own group (the study used no grouping rule)"
    index = DataIndex(root, view.attrs.get(keys.LAYOUT, "flat"), tuple(view.classes), test, None)
    try:
        groups = list(resolve_groups(rule, index, test).groups)
    except DataError as exc:
        return [str(f) for f in test.files], f"each file its own group ({str(exc)[:120]})"
    return groups, f"{len(set(groups))} source groups by {rule}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def family_params(view: StudyView, trial: FrozenTrial) -> tuple[str, dict]:
    """(family, parameters without prefix, fixed values included) — what built the trial's model.

    Mirrors `search.space.SearchSpace.suggest`: fixed entries of the space are
    not Optuna parameters, so they come from the study's recorded space.
    """
    space = view.attrs.get(keys.SPACE) or {}
    family = trial.user_attrs.get(keys.FAMILY) or trial.params.get("family") or space.get("model")
    prefix = f"{family}." if space.get("model") == "all" else ""
    section = (space.get("families") or {}).get(family, {})
    params: dict = {}
    for name, spec in {**section.get("training", {}), **section.get("model", {})}.items():
        if not isinstance(spec, dict):
            params[name] = spec
        elif prefix + name in trial.params:
            params[name] = trial.params[prefix + name]
    if "max_epochs" in params and trial.user_attrs.get(keys.MAX_EPOCHS):
        params["max_epochs"] = trial.user_attrs[keys.MAX_EPOCHS]  # MAX_EPOCHS= overrides the space's cap
    return family, params
