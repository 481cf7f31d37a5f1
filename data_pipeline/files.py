"""Atomic file writes: a reader, or a crash, sees the old file or the new one, never half of one.

Every file hematune stores for later (split manifests, trial models, reports,
release files, TEST predictions, benchmark results) is written here: to a
hidden temporary file beside the target, flushed to disk, then renamed over
the target in one step (``os.replace`` is atomic on POSIX within one file
system). The temporary name starts with ``.`` and holds ``.tmp-<pid>``, which
is what the sweeps that remove a dead writer's leftovers look for, and keeps
the target's suffix because some writers need it (Keras insists on
``.keras``, NumPy appends ``.npz`` to any other name).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; when the block ends without an error the file
    is fsynced and moved over ``path``, otherwise it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (see `replacing`)."""
    with replacing(path) as tmp:
        tmp.write_text(text)
