"""The search's view of the data: TRAIN indexed, split by group, decoded on demand.

TEST is never listed nor read here: only its class folder names are compared
with TRAIN's, so a missing TEST class is caught before hours of searching.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_pipeline import DataError
from data_pipeline.cache import load_or_decode
from data_pipeline.files import write_atomic
from data_pipeline.ingest import FINGERPRINT_RULE, DataIndex, fingerprint, scan
from data_pipeline.split import Split, make_split
from search import keys


@dataclass
class SearchData:
    index: DataIndex
    split: Split
    fingerprint: str
    cache_dir: Path | None = None
    on_decode: Callable[[int, int], None] | None = None
    on_problems: Callable[[dict[str, str]], None] | None = None
    problems: dict[str, str] = field(default_factory=dict)
    _arrays: dict = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.index.classes

    def manifest(self) -> dict:
        return self.split.manifest(self.index.root)

    def arrays(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x_train, y_train, x_val, y_val) at ``size``×``size``, uint8, decoded once and cached."""
        if size not in self._arrays:
            parts = []
            for part in (self.split.train, self.split.val):
                decoded = load_or_decode(part, size, self.cache_dir, progress=self.on_decode)
                new = {k: v for k, v in decoded.problems.items() if k not in self.problems}
                if new and self.on_problems:
                    self.on_problems(new)
                self.problems.update(new)
                parts.extend(decoded.usable_arrays())
            for name, labels in (("train", parts[1]), ("validation", parts[3])):
                missing = sorted(set(range(len(self.classes))) - set(np.unique(labels).tolist()))
                if missing:
                    names = ", ".join(self.classes[i] for i in missing)
                    raise DataError(f"{self.index.root}: no readable {name} images left for class {names}; "
                                    "see the skipped files above")
            self._arrays[size] = tuple(parts)
        return self._arrays[size]

    def chance_level(self) -> float:
        """Training accuracy of always guessing the commonest class."""
        labels = np.asarray(self.split.train.labels)
        return float(np.bincount(labels).max() / len(labels))

    def summary(self) -> dict:
        """What the study records about its data."""
        counts = lambda images: {c: int(sum(1 for l in images.labels if l == i)) for i, c in enumerate(self.classes)}
        return {
            keys.DATA_ROOT: str(self.index.root),
            keys.LAYOUT: self.index.layout,
            keys.CLASSES: list(self.classes),
            keys.DATA_FINGERPRINT: self.fingerprint,
            keys.DATA_FINGERPRINT_RULE: FINGERPRINT_RULE,  # studies without it were fingerprinted by file times
            keys.SPLIT_RULE: self.split.rule,
            keys.SPLIT_SEED: self.split.seed,
            keys.VAL_FRACTION: self.split.val_fraction,
            keys.TRAIN_COUNTS: counts(self.split.train),
            keys.VAL_COUNTS: counts(self.split.val),
            keys.TEST_COUNTS: counts(self.split.test) if self.split.test is not None else None,
            keys.SKIPPED_NON_IMAGES: len(self.index.skipped),
        }


def prepare(data_root: str | os.PathLike, *, groups: str = "auto", val_fraction: float = 0.2,
            seed: int = 0, cache_dir: Path | None = None) -> SearchData:
    """Index DATA (TEST names only), fingerprint the training pool and split it by group."""
    index = scan(data_root, read_test=False)
    split = make_split(index, groups, val_fraction=val_fraction, seed=seed)
    return SearchData(index, split, fingerprint(index.train, index.root, cache_dir), cache_dir)


def write_manifest(data: SearchData, path: Path) -> dict:
    """Record the split (which file went where, by which rule) beside the study; atomic."""
    manifest = data.manifest()
    write_atomic(path, json.dumps(manifest, indent=1))
    return manifest
