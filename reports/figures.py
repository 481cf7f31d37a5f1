"""The report's figures, as PNG files (matplotlib, no display needed).

Each function takes plain numbers and a path, draws one figure and closes it,
so a report on a study with hundreds of trials never piles up open figures.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on a headless server and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def reliability(bins: list[dict], ece: float, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    accs = [b["accuracy"] if b["count"] else 0.0 for b in bins]
    ax.bar(centres, accs, width=1 / len(bins), edgecolor="black", alpha=0.7, label="accuracy in bin")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for c, b in zip(centres, bins):
        if b["count"]:
            ax.text(c, 0.02, str(b["count"]), ha="center", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {ece:.3f} (numbers: images per bin)")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def optimization_history(numbers: list[int], values: list[float], families: list[str], path: Path,
                         pruned: list[tuple[int, float]] = ()) -> Path:
    """Completed trials by family, the best-so-far line, and pruned trials at their last reported accuracy."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    if pruned:
        ax.scatter([n for n, _ in pruned], [v for _, v in pruned], marker="x", s=18, color="grey",
                   label="pruned (last epoch reported)")
    for family in sorted(set(families)):
        pts = [(n, v) for n, v, f in zip(numbers, values, families) if f == family]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, label=family)
    order = np.argsort(numbers)
    best = np.maximum.accumulate(np.asarray(values)[order]) if values else []
    ax.step(np.asarray(numbers)[order], best, where="post", color="black", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("group-validation accuracy")
    ax.set_title("Optimization history")
    ax.legend(fontsize=8)
    return _save(fig, path)


def importances(values: dict[str, float], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * max(len(values), 3) + 1.2))
    names = list(values)[::-1]
    ax.barh(names, [values[n] for n in names])
    ax.set_xlabel("importance (fANOVA share of the accuracy's variance)")
    ax.set_title("Parameter importances")
    return _save(fig, path)


def pareto(points: list[dict], front: list[int], path: Path) -> Path:
    """points: dicts with trial, latency_ms, val_accuracy, family; front: trial numbers on the front."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for family in sorted({p["family"] for p in points}):
        pts = [p for p in points if p["family"] == family]
        ax.scatter([p["latency_ms"] for p in pts], [p["val_accuracy"] for p in pts], s=22, label=family, alpha=0.7)
    on = sorted((p for p in points if p["trial"] in front), key=lambda p: p["latency_ms"])
    ax.plot([p["latency_ms"] for p in on], [p["val_accuracy"] for p in on], "-o", color="black", mfc="none",
            label="Pareto front")
    for p in on:
        ax.annotate(str(p["trial"]), (p["latency_ms"], p["val_accuracy"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("CPU latency, batch 1 (ms, log scale)")
    ax.set_ylabel("group-validation accuracy")
    ax.set_title("Accuracy vs latency (completed trials)")
    ax.legend(fontsize=8)
    return _save(fig, path)
