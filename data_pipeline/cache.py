"""Decode each image once: resized uint8 arrays cached on disk, memory-mapped.

The cache key is a hash of the files' contents, in order, plus the resolution,
so the second trial and the second run decode nothing, an identical copy of
the data (restored backup, new server) finds its entry, and any change to a
file makes a new entry instead of a stale hit. Content hashes are memoised by
path, size, mtime, ctime and inode (:func:`file_digests`), so finding the key
reads no file twice.
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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from data_pipeline.errors import first_line
from data_pipeline.files import write_atomic

if TYPE_CHECKING:  # ingest imports this module for the content fingerprint
    from data_pipeline.ingest import ImageSet

MAX_PIXELS = 40_000_000  # larger than any smear crop; beyond it we suspect a decompression bomb
MIN_SIDE = 8  # pixels; smaller cannot hold a cell
FORMAT_VERSION = 3  # bump when decoding changes, so old entries are not reused (2: only IMAGE_FORMATS open;
# 3: keyed by content, problems stored by row so a copy of the data names its own files)
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


def cache_key(images: ImageSet, size: int, cache_dir: Path | None = None) -> str:
    """The entry of these files' pixels at ``size``: their contents in order (labels are not pixels)."""
    digest = hashlib.sha256(f"v{FORMAT_VERSION}\0{size}\n".encode())
    for file_digest in file_digests(images.files, cache_dir):
        digest.update(f"{file_digest}\n".encode())
    return f"{digest.hexdigest()[:20]}-{size}px"


DIGEST_CHUNK = 1 << 20
_MEMOS: dict[Path, dict[str, list]] = {}  # memo file -> its entries, read once per process


def _stat_key(path: str) -> list:
    """What must not change for a memoised hash to stay valid. ctime and inode change whenever a file is
    rewritten or replaced, even by a copy that keeps the old mtime (cp -p, rsync -t)."""
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _sha256(path: str) -> str:
    """The file's hash; for a file that cannot be read, a marker (the decoder then reports it, as before)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(DIGEST_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    return digest.hexdigest()


def file_digests(paths: Sequence[str | os.PathLike], cache_dir: Path | None = None) -> list[str]:
    """SHA-256 of each file's bytes, in order.

    Hashes are memoised in the cache folder, one JSON file per folder that
    holds the files (``digests-<hash of that folder>.json``), keyed by absolute
    path with the file's size, mtime, ctime and inode: a re-run stats each file
    and reads none it has hashed before; a new, edited or replaced file is
    hashed again. The memo is only a speed-up: losing it, or two processes
    writing it at once (each write is atomic), costs a re-hash, never a wrong
    hash.
    """
    names = [os.path.abspath(p) for p in paths]
    if not names:
        return []
    cache_dir = Path(cache_dir or default_cache_dir())
    folder = os.path.commonpath(names) if len(names) > 1 else os.path.dirname(names[0])
    memo_path = cache_dir / f"digests-{hashlib.sha256(folder.encode()).hexdigest()[:16]}.json"
    memo = _MEMOS.get(memo_path)
    if memo is None:
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            memo = {}
        _MEMOS[memo_path] = memo
    keys = [_stat_key(name) for name in names]
    missing = [i for i, (name, key) in enumerate(zip(names, keys)) if (memo.get(name) or [None])[:-1] != key]
    if missing:
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:  # hashlib releases the GIL
            for i, file_digest in zip(missing, pool.map(_sha256, (names[i] for i in missing))):
                memo[names[i]] = [*keys[i], file_digest]
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(memo_path, json.dumps(memo, separators=(",", ":")))
        except OSError:
            pass  # a read-only cache folder: hashing still works, only the next run re-hashes
    return [memo[name][-1] for name in names]


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
    key = cache_key(images, size, cache_dir)
    array_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    labels = np.asarray(images.labels, dtype=np.int64)
    if array_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        pixels = np.load(array_path, mmap_mode="r")
        problems = {str(images.files[int(row)]): why for row, why in meta["problem_rows"].items()}
        return DecodedImages(pixels, labels, np.asarray(meta["usable"], bool), problems, True)

    sweep_dead_writers(cache_dir)
    tmp_suffix = f".tmp-{os.getpid()}"
    tmp_array = cache_dir / f"{key}.npy{tmp_suffix}"
    pixels = np.lib.format.open_memmap(tmp_array, mode="w+", dtype=np.uint8, shape=(len(images), size, size, 3))
    usable = np.zeros(len(images), dtype=bool)
    problem_rows: dict[int, str] = {}

    def work(i: int) -> None:
        try:
            pixels[i] = decode_image(images.files[i], size)
            usable[i] = True
        except ValueError as exc:
            problem_rows[i] = str(exc)

    try:
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            for done, _ in enumerate(pool.map(work, range(len(images))), start=1):
                if progress is not None:
                    progress(done, len(images))
        pixels.flush()
        tmp_meta = cache_dir / f"{key}.json{tmp_suffix}"
        tmp_meta.write_text(json.dumps({"usable": usable.tolist(), "problem_rows": problem_rows, "size": size}))
        os.replace(tmp_meta, meta_path)
        os.replace(tmp_array, array_path)
    finally:
        for leftover in cache_dir.glob(f"{key}.*{tmp_suffix}"):
            leftover.unlink(missing_ok=True)
    problems = {str(images.files[row]): why for row, why in sorted(problem_rows.items())}
    return DecodedImages(np.load(array_path, mmap_mode="r"), labels, usable, problems, False)
