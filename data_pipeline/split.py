"""Group-aware, stratified, seeded splits.

The reference set holds ~350 source cells, each augmented into ~30 files. A
validation set drawn at random would hold near-copies of training images and
report accuracy far above what TEST shows. So every split here keeps all files
of one *group* (one source cell) on the same side.

Grouping rules are small functions from (file, class) to a group id:

* ``filename`` — a regular expression with a named group ``group`` applied to
  the file name; the default matches the reference set's ``_<idx>_<n>.jpeg``.
  ``filename:<regex>`` uses your own expression.
* ``csv:<path>`` — a CSV with columns ``file,group`` (file relative to DATA or
  a bare file name).
* ``none`` — every file is its own group (say so when you report results!).
* ``auto`` (default) — ``filename`` when every file name matches the default
  pattern, otherwise ``none``; the rule actually used is returned and recorded.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from data_pipeline.errors import DataError
from data_pipeline.ingest import DataIndex, ImageSet

DEFAULT_FILENAME_PATTERN = r"^_(?P<group>\d+)_\d+\.\w+$"


@dataclass(frozen=True)
class GroupRule:
    """A resolved grouping rule: its description and the group id of every file."""

    description: str
    groups: tuple[str, ...]


def _filename_groups(images: ImageSet, classes, pattern: str) -> list[str] | None:
    regex = re.compile(pattern)
    groups = []
    for path, label in zip(images.files, images.labels):
        match = regex.search(path.name)
        if match is None:
            return None
        groups.append(f"{classes[label]}/{match.group('group')}")
    return groups


def _csv_groups(images: ImageSet, root: Path, csv_path: Path) -> list[str]:
    if not csv_path.is_file():
        raise DataError(f"GROUPS=csv:{csv_path}: file does not exist; give a CSV with columns file,group")
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"file", "group"} <= set(reader.fieldnames):
            raise DataError(f"GROUPS=csv:{csv_path}: needs a header with columns file,group")
        table = {row["file"]: row["group"] for row in reader}
    groups = []
    for path in images.files:
        key = os.path.relpath(path, root)
        group = table.get(key, table.get(path.name))
        if group is None:
            raise DataError(f"GROUPS=csv:{csv_path}: no group for {key}; add a row for every image")
        groups.append(group)
    return groups


def resolve_groups(rule: str, index: DataIndex, images: ImageSet) -> GroupRule:
    """Apply a GROUPS= rule to ``images``; raise DataError if it cannot be applied."""
    rule = rule.strip()
    if rule == "none":
        return GroupRule("none (each file its own group)", tuple(str(p) for p in images.files))
    if rule == "auto":
        groups = _filename_groups(images, index.classes, DEFAULT_FILENAME_PATTERN)
        if groups is not None:
            return GroupRule(f"filename:{DEFAULT_FILENAME_PATTERN} (auto)", tuple(groups))
        return GroupRule("none (auto: file names carry no group)", tuple(str(p) for p in images.files))
    if rule == "filename" or rule.startswith("filename:"):
        pattern = rule.partition(":")[2] or DEFAULT_FILENAME_PATTERN
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise DataError(f"GROUPS={rule}: invalid regular expression ({exc})") from None
        if "group" not in regex.groupindex:
            raise DataError(f"GROUPS={rule}: the expression needs a named group, e.g. (?P<group>\\d+)")
        groups = _filename_groups(images, index.classes, pattern)
        if groups is None:
            bad = next(p for p in images.files if not regex.search(p.name))
            raise DataError(f"GROUPS={rule}: file name {bad.name} does not match; fix the pattern or use GROUPS=none")
        return GroupRule(f"filename:{pattern}", tuple(groups))
    if rule.startswith("csv:"):
        csv_path = Path(rule[4:]).expanduser()
        return GroupRule(f"csv:{csv_path}", tuple(_csv_groups(images, index.root, csv_path)))
    raise DataError(f"GROUPS={rule}: unknown rule; use auto, filename, filename:<regex>, csv:<file> or none")


def _group_holdout(labels, groups, fraction: float, seed: int, classes) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, holdout): about ``fraction`` of the groups held out, per class.

    StratifiedGroupKFold keeps groups whole and class proportions close; its
    first fold with every class on both sides is the holdout. Needs at least
    2 groups in every class.
    """
    labels = np.asarray(labels)
    n_splits = max(2, round(1 / fraction))
    group_ids = np.unique(np.asarray(groups), return_inverse=True)[1]
    for label in np.unique(labels):
        n_groups = len(np.unique(group_ids[labels == label]))
        if n_groups < 2:
            raise DataError(
                f"class {classes[label]} has only {n_groups} source group(s): a group-aware holdout needs at least 2; "
                "add images from more source cells or change GROUPS"
            )
    splitter = StratifiedGroupKFold(n_splits=min(n_splits, len(np.unique(group_ids))), shuffle=True, random_state=seed)
    classes_present = set(labels.tolist())
    # Stratification is best effort with uneven groups: take the first fold that has every class on both sides.
    for keep, holdout in splitter.split(np.zeros(len(labels)), labels, group_ids):
        if set(labels[keep].tolist()) == set(labels[holdout].tolist()) == classes_present:
            return np.sort(keep), np.sort(holdout)
    raise DataError(
        f"no group-aware holdout of about {fraction:.0%} keeps every class on both sides "
        "(too few source groups in some class); add images from more source cells or change VAL_FRACTION/GROUPS"
    )


@dataclass(frozen=True)
class Split:
    """Train / validation (/ test for the flat layout) parts of a data set."""

    train: ImageSet
    val: ImageSet
    test: ImageSet | None  # None: the data set's own TEST folder is the test part
    rule: str
    seed: int
    val_fraction: float

    def manifest(self, root: Path) -> dict:
        """A JSON-able record of the split, with a hash to refer to it by."""
        def rel(images: ImageSet | None):
            return None if images is None else [os.path.relpath(p, root) for p in images.files]

        body = {
            "rule": self.rule, "seed": self.seed, "val_fraction": self.val_fraction,
            "train": rel(self.train), "val": rel(self.val), "test": rel(self.test),
        }
        body["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        return body


def make_split(index: DataIndex, rule: str = "auto", *, val_fraction: float = 0.2,
               test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Split TRAIN into train/validation by group; for a flat folder first carve out test."""
    if not 0.0 < val_fraction < 0.5:
        raise DataError(f"VAL_FRACTION={val_fraction}: must be between 0 and 0.5")
    pool = index.train
    test = None
    if index.layout == "flat":
        groups = resolve_groups(rule, index, pool)
        keep, held = _group_holdout(pool.labels, groups.groups, test_fraction, seed, index.classes)
        test, pool = pool.subset(held), pool.subset(keep)
    groups = resolve_groups(rule, index, pool)
    keep, held = _group_holdout(pool.labels, groups.groups, val_fraction, seed + 1, index.classes)
    return Split(pool.subset(keep), pool.subset(held), test, groups.description, seed, val_fraction)


def group_kfold(labels, groups, k: int, seed: int = 0, classes=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """K group-aware, stratified folds: ``[(train_idx, val_idx), …]``, sorted indices.

    Every group lands in exactly one fold's validation part and never on both
    sides of a fold, so every source cell is validated exactly once (what
    `hematune select` cross-validates on). Every class needs at least ``k``
    groups, or some fold would validate (or train) without it.
    """
    labels = np.asarray(labels)
    if k < 2:
        raise DataError(f"FOLDS={k}: cross-validation needs at least 2 folds")
    group_ids = np.unique(np.asarray(groups), return_inverse=True)[1]
    for label in np.unique(labels):
        n_groups = len(np.unique(group_ids[labels == label]))
        if n_groups < k:
            name = classes[label] if classes is not None else str(label)
            raise DataError(
                f"class {name} has only {n_groups} source group(s), fewer than FOLDS={k}: "
                f"use FOLDS={max(2, n_groups)} or fewer, or a GROUPS rule with more groups"
            )
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.sort(train), np.sort(val)) for train, val in splitter.split(np.zeros(len(labels)), labels, group_ids)]
