"""A by-eye check of the augmentation: real cells at every strength, as one PNG grid.

Numbers cannot say whether a cell is still recognisable after rotation, zoom
and colour jitter; a picture can. Rows are strengths 0, 0.25, 0.5, 0.75 and
1.0, columns a few draws of one cell per class from DATA's training part, each
draw exactly what a training step would feed the model at that strength.

    python -m data_pipeline.preview --data ../shared/data/blood-cells   (make augment-preview)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from data_pipeline.cache import decode_image
from data_pipeline.errors import DataError, first_line
from data_pipeline.ingest import scan

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
PROG = "python -m data_pipeline.preview"


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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)  # never leave a half-written picture behind


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/blood-cells", help="DATA folder (TRAIN/<class>/ or <class>/)")
    parser.add_argument("--out", type=Path, default=Path("docs/augmentation.png"), help="PNG to write")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels, as a trial's image_size")
    parser.add_argument("--cells", type=int, default=4, help="how many classes to show one cell of")
    parser.add_argument("--draws", type=int, default=3, help="draws per cell and strength")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("size", "cells", "draws"):
        if getattr(args, name) < 1:
            print(f"{PROG}: error: --{name}={getattr(args, name)}: must be at least 1", file=sys.stderr)
            return 2
    try:
        cells, names = sample_cells(args.data, args.cells, args.size)
    except (DataError, ValueError) as exc:
        print(f"{PROG}: error: {first_line(exc)}", file=sys.stderr)
        return 2
    save_grid(augmented_grid(cells, args.draws, args.seed), names, args.draws, args.out)
    print(f"wrote {args.out} ({len(STRENGTHS)} strengths × {len(names)} cells × {args.draws} draws, {args.size} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
