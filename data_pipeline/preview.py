"""A by-eye check of the augmentation: real cells at every strength, as one PNG grid.

Numbers cannot say whether a cell is still recognisable after rotation, zoom
and colour jitter; a picture can. Rows are strengths 0, 0.25, 0.5, 0.75 and
1.0, columns a few draws of one cell per class from DATA's training part, each
draw exactly what a training step would feed the model at that strength.

    hematune augment-preview --data ../shared/data/blood-cells   (make augment-preview)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipeline.cache import decode_image
from data_pipeline.errors import DataError
from data_pipeline.files import replacing
from data_pipeline.ingest import scan

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def sample_cells(data_root: str | Path, cells: int, size: int) -> tuple[np.ndarray, list[str]]:
    """The first training image of the first ``cells`` classes, decoded as training decodes them."""
    index = scan(data_root, read_test=False)
    picked, names = [], []
    for label, name in enumerate(index.classes[:cells]):
        first = next(f for f, l in zip(index.train.files, index.train.labels) if l == label)
        try:
            picked.append(decode_image(first, size))
        except ValueError as exc:
            raise DataError(f"{first}: {exc}") from None
        names.append(name)
    return np.stack(picked), names


def augmented_grid(cells: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """(strengths, cells × draws, size, size, 3) uint8: each strength's training-time output."""
    from data_pipeline.augment import build_augmentation  # imports Keras: only once the arguments are good

    batch = np.repeat(cells, draws, axis=0).astype("float32")
    rows = [np.asarray(build_augmentation(s, seed=seed)(batch, training=True)) for s in STRENGTHS]
    return np.clip(np.rint(np.stack(rows)), 0, 255).astype("uint8")


def save_grid(grid: np.ndarray, names: list[str], draws: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, columns = grid.shape[:2]
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.15), squeeze=False)
    for r in range(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.imshow(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{names[c // draws].lower()} {c % draws + 1}", fontsize=7)
            if c == 0:
                ax.set_ylabel(f"strength {STRENGTHS[r]:g}", fontsize=8)
    fig.suptitle("hematune augmentation: each row a strength, each column one training-time draw", fontsize=9)
    fig.tight_layout()
    with replacing(out) as tmp:  # never leave a half-written picture behind
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_preview(data_root: str | Path, out: Path, size: int = 96, cells: int = 4, draws: int = 3,
                  seed: int = 0) -> str:
    """Draw the grid into ``out``; the line that says what was written. Bad DATA is a `DataError`."""
    picked, names = sample_cells(data_root, cells, size)
    save_grid(augmented_grid(picked, draws, seed), names, draws, out)
    return f"wrote {out} ({len(STRENGTHS)} strengths × {len(names)} cells × {draws} draws, {size} px)"
