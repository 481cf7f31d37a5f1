"""Shared pieces: the TRAIN subsample, spread statistics, TEST scoring, quiet search output.

TEST is scored through ``reports.evaluate`` (the same code ``make report`` and
``make promote`` use), with the confidence interval resampling whole source
cells, so a benchmark number and a report number mean the same thing.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

REFERENCE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "blood-cells"


@dataclass
class Paths:
    """Where one benchmark run keeps its working files (never committed)."""

    work: Path  # .bench/run-<mode>-<backend>/
    tag: str  # per invocation, so re-running one section never resumes an older run's studies

    @property
    def storage(self) -> str:
        return f"sqlite:///{self.work / f'bench-{self.tag}.db'}"

    @property
    def studies(self) -> Path:
        return self.work / f"studies-{self.tag}"

    @property
    def logs(self) -> Path:
        return self.work / "logs"


def spread(values: list[float]) -> dict:
    """Median, min, max and count: what every timing in the report states."""
    values = [float(v) for v in values]
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values)}


def loadavg() -> float:
    """1-minute load average: a benchmark on a busy machine says so in its report."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def make_subset(source: Path, dest: Path, files_per_class: int, groups_per_class: int | None = None) -> Path:
    """A class-balanced TRAIN subsample as symlinks; TEST linked whole. Nothing is copied.

    Each class gets ``files_per_class`` files taken round-robin over its source
    groups (one copy of every cell, then a second copy of every cell, …), so
    every cell is kept when there are enough files, classes stay balanced (the
    reference set balances classes by augmenting rare cells more), and a cell's
    copies still share one group for the group-aware split.
    """
    marker = dest / ".complete"
    if marker.is_file():
        return dest
    for class_dir in sorted((source / "TRAIN").iterdir()):
        if not class_dir.is_dir():
            continue
        by_group: dict[str, list[Path]] = {}
        for path in sorted(class_dir.iterdir()):
            parts = path.name.split("_")
            by_group.setdefault(parts[1] if len(parts) > 2 else path.name, []).append(path)
        chosen = sorted(by_group, key=lambda g: (len(g), g))
        if groups_per_class:
            chosen = chosen[:groups_per_class]
        picked: list[Path] = []
        for round_ in range(max(len(by_group[g]) for g in chosen)):
            picked += [by_group[g][round_] for g in chosen if round_ < len(by_group[g])]
            if len(picked) >= files_per_class:
                break
        target = dest / "TRAIN" / class_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for path in picked[:files_per_class]:
            link = target / path.name
            if not link.is_symlink():
                link.symlink_to(path.resolve())
    test = dest / "TEST"
    if not test.is_symlink():
        test.symlink_to((source / "TEST").resolve())
    marker.write_text(json.dumps({"files_per_class": files_per_class, "groups_per_class": groups_per_class}))
    return dest


def quiet_console(log: Path) -> Console:
    """Search progress goes to a log file, not the benchmark's terminal (and never a live bar)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    return Console(file=open(log, "a"), highlight=False, soft_wrap=True, force_terminal=False, width=140)


def test_score(model_file: Path, data_root: Path, report_dir: Path) -> dict:
    """TEST accuracy of one saved model with a 95 % bootstrap interval over TEST source cells.

    Uses ``reports.evaluate`` (predictions saved once per model file, keyed by
    its SHA-256); TEST groups come from the reference set's file-name rule.
    """
    from data_pipeline.ingest import scan
    from data_pipeline.split import resolve_groups
    from reports import evaluate
    from reports.study import sha256_file
    from search import metrics as scoring

    index = scan(data_root, read_test=True)
    groups = list(resolve_groups("filename", index, index.test).groups)
    sha = sha256_file(model_file)
    pred = evaluate.test_predictions(Path(model_file), sha, 0, index.test, index.root, list(index.classes),
                                     Path(report_dir), groups=groups)
    low, high = evaluate.bootstrap_ci(pred.correct, pred.groups)
    return {"accuracy": scoring.accuracy(pred.y_true, pred.y_pred), "ci95": [low, high],
            "images": int(len(pred.y_true)), "groups": int(len(set(groups)))}


class Stopwatch:
    """``with Stopwatch() as sw: …`` then ``sw.seconds`` (perf_counter wall time)."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


def best_so_far(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """[(x, value)] sorted by x → the running maximum (a step curve's corners)."""
    out, best = [], -np.inf
    for x, value in sorted((x, v) for x, v in points if x is not None and v is not None):
        if value > best:
            best = value
            out.append((float(x), float(value)))
    return out


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    """First x at which a best-so-far curve reaches ``target`` (None: never)."""
    return next((x for x, value in curve if value >= target - 1e-9), None)
