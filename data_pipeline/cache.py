"""Decode each image once: resized uint8 arrays cached on disk, memory-mapped.

The cache key is the fingerprint of the exact file list (paths, labels, sizes,
mtimes) plus the resolution, so the second trial and the second run decode
nothing, and any change to the data makes a new entry instead of a stale hit.
Images that cannot be used (zero bytes, corrupt, not really an image, a
decompression bomb, too small to be a cell crop) are skipped and reported —
never a crash half-way through a folder.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from data_pipeline.ingest import ImageSet
from data_pipeline.errors import first_line

MAX_PIXELS = 40_000_000  # larger than any smear crop; beyond it we suspect a decompression bomb
MIN_SIDE = 8  # pixels; smaller cannot hold a cell
FORMAT_VERSION = 2  # bump when decoding changes, so old entries are not reused (2: only IMAGE_FORMATS open)
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF")  # Pillow's names; a GIF or PSD renamed .png is unreadable
_IN_MEMORY = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>")


def default_cache_dir() -> Path:
    return Path(os.environ.get("HEMATUNE_CACHE", Path.home() / ".cache" / "hematune"))


@dataclass(frozen=True)
class DecodedImages:
    """Images of one ImageSet at one resolution; only ``usable`` rows are real pixels."""

    pixels: np.ndarray  # (N, size, size, 3) uint8, memory-mapped
    labels: np.ndarray  # (N,) int
    usable: np.ndarray  # (N,) bool
    problems: dict[str, str]  # file -> why it was skipped
    from_cache: bool

    def usable_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(pixels, labels) of the usable images, loaded into memory."""
        if self.usable.all():
            return np.asarray(self.pixels), self.labels
        return np.asarray(self.pixels[self.usable]), self.labels[self.usable]


def decode_image(source: str | os.PathLike | bytes, size: int) -> np.ndarray:
    """One image (a file path, or the bytes of an upload) → (size, size, 3) uint8 RGB, stretched to a square.

    Raises ValueError with a short reason for anything unusable. The one
    decoder of hematune: the training cache, ``predict`` and the server all
    call it, so a served prediction sees exactly the pixels training saw.
    Only the formats hematune documents are opened (JPEG, PNG, BMP, TIFF):
    Pillow can open many more, some through external programs, and the server
    feeds this function bytes from strangers.
    """
    from_bytes = isinstance(source, (bytes, bytearray, memoryview))
    try:
        if (len(source) if from_bytes else os.path.getsize(source)) == 0:
            raise ValueError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if from_bytes else source, formats=IMAGE_FORMATS) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ValueError(f"{width}x{height} pixels is too large (possible decompression bomb)")
                if min(width, height) < MIN_SIDE:
                    raise ValueError(f"{width}x{height} pixels is too small to hold a cell")
                img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster
                rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8)
    except ValueError:
        raise
    except (OSError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        reason = first_line(exc)
        reason = _IN_MEMORY.sub("", reason)  # "<_io.BytesIO object at 0x…>" says nothing to a user
        raise ValueError(f"unreadable image ({reason})") from None


def cache_key(images: ImageSet, size: int) -> str:
    digest = hashlib.sha256(f"v{FORMAT_VERSION}\0{size}\n".encode())
    for path, label in zip(images.files, images.labels):
        stat = path.stat()
        digest.update(f"{Path(path).resolve()}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return f"{digest.hexdigest()[:20]}-{size}px"


DEAD_WRITER_AGE_S = 3600  # a temporary file untouched this long, of a process gone from this machine


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (temporary files carry their writer's pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_writers(cache_dir: Path) -> None:
    """Remove temporary files of decoders killed mid-write (kill -9, power loss): one per crash, as large as
    the data set, they would pile up. The age guard spares a live writer on another machine sharing the folder."""
    now = time.time()
    for leftover in cache_dir.glob("*.tmp-*"):
        pid = leftover.name.rpartition(".tmp-")[2]
        try:
            stale = now - leftover.stat().st_mtime > DEAD_WRITER_AGE_S
        except FileNotFoundError:
            continue
        if pid.isdigit() and stale and not process_alive(int(pid)):
            leftover.unlink(missing_ok=True)


def load_or_decode(
    images: ImageSet,
    size: int,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DecodedImages:
    """Return the images decoded at ``size``, from the cache when it has them.

    A new entry is written to temporary files and renamed into place, so a
    crash or a second worker never leaves a half-written cache entry behind.
    """
    cache_dir = Path(cache_dir or default_cache_dir())
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(images, size)
    array_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    labels = np.asarray(images.labels, dtype=np.int64)
    if array_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        pixels = np.load(array_path, mmap_mode="r")
        return DecodedImages(pixels, labels, np.asarray(meta["usable"], bool), meta["problems"], True)

    sweep_dead_writers(cache_dir)
    tmp_suffix = f".tmp-{os.getpid()}"
    tmp_array = cache_dir / f"{key}.npy{tmp_suffix}"
    pixels = np.lib.format.open_memmap(tmp_array, mode="w+", dtype=np.uint8, shape=(len(images), size, size, 3))
    usable = np.zeros(len(images), dtype=bool)
    problems: dict[str, str] = {}

    def work(i: int) -> None:
        try:
            pixels[i] = decode_image(images.files[i], size)
            usable[i] = True
        except ValueError as exc:
            problems[str(images.files[i])] = str(exc)

    try:
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            for done, _ in enumerate(pool.map(work, range(len(images))), start=1):
                if progress is not None:
                    progress(done, len(images))
        pixels.flush()
        tmp_meta = cache_dir / f"{key}.json{tmp_suffix}"
        tmp_meta.write_text(json.dumps({"usable": usable.tolist(), "problems": problems, "size": size}))
        os.replace(tmp_meta, meta_path)
        os.replace(tmp_array, array_path)
    finally:
        for leftover in cache_dir.glob(f"{key}.*{tmp_suffix}"):
            leftover.unlink(missing_ok=True)
    return DecodedImages(np.load(array_path, mmap_mode="r"), labels, usable, problems, False)
