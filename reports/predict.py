"""Classify images with a release: ``hematune predict --release DIR IMAGES_OR_FOLDERS…``.

The release is verified first (checksums, safe-mode load), so a damaged or
edited release never predicts. Images are decoded exactly as in training
(`data_pipeline.cache.decode_image`) and classified in batches; a file that
cannot be read gets its own row with the reason and the others are still
classified — one bad file in a folder of thousands must not cost the rest.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from data_pipeline.cache import decode_image
from reports import evaluate
from reports.release import verify


@dataclass
class Row:
    file: str
    label: str | None = None
    confidence: float | None = None
    top3: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        return {"file": self.file, "class": self.label, "confidence": self.confidence,
                "top3": [{"class": c, "confidence": p} for c, p in self.top3], "error": self.error}


def collect(inputs: list[str]) -> list[Path]:
    """Files as given, and every non-hidden file under the folders given (sorted)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
        else:
            files.append(path)  # a missing path still gets a row saying so
    return files


def predict(release: str | os.PathLike, inputs: list[str], batch_size: int = 64,
            progress_console: Console | None = None) -> list[Row]:
    checked = verify(release)
    size = int(checked.preprocessing["image_size"])
    files = collect(inputs)
    rows = [Row(str(f)) for f in files]
    console = progress_console or Console(stderr=True)
    show = console.is_terminal and len(files) > batch_size
    bar = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, transient=True, disable=not show)
    with bar:
        task = bar.add_task("predict", total=len(files))
        for start in range(0, len(files), batch_size):
            chunk = range(start, min(start + batch_size, len(files)))
            pixels, ok = [], []
            for i in chunk:
                try:
                    if not files[i].is_file():
                        raise ValueError("no such file" if not files[i].exists() else "not a file")
                    pixels.append(decode_image(files[i], size))
                    ok.append(i)
                except ValueError as exc:
                    rows[i].error = str(exc)
                except OSError as exc:
                    rows[i].error = f"unreadable ({exc.strerror or type(exc).__name__})"
            if ok:
                probs = evaluate.predict_probs(checked.model, np.stack(pixels), batch_size=batch_size)
                for i, p in zip(ok, probs):
                    order = np.argsort(-p)[:3]
                    rows[i].label = checked.labels[int(order[0])]
                    rows[i].confidence = float(p[order[0]])
                    rows[i].top3 = [(checked.labels[int(k)], float(p[k])) for k in order]
            bar.advance(task, len(chunk))
    return rows


def _top3_text(row: Row) -> str:
    return "; ".join(f"{c} {p:.3f}" for c, p in row.top3)


def render(rows: list[Row], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps([r.as_dict() for r in rows], indent=1)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["file", "class", "confidence", "top3", "error"])
        for r in rows:
            writer.writerow([r.file, r.label or "", "" if r.confidence is None else f"{r.confidence:.4f}",
                             _top3_text(r), r.error or ""])
        return out.getvalue().rstrip("\n")
    table = [("file", "class", "confidence", "top-3")]
    for r in rows:
        if r.error:
            table.append((r.file, "ERROR", "", r.error))
        else:
            table.append((r.file, r.label, f"{r.confidence:.3f}", _top3_text(r)))
    widths = [max(len(row[k]) for row in table) for k in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in table)
