"""Find the images of a folder-per-class data set and their labels.

Two layouts are accepted:

* ``ROOT/TRAIN/<class>/…`` and ``ROOT/TEST/<class>/…`` (the reference set);
* ``ROOT/<class>/…`` — the test part is then carved out by `split` and recorded.

Only file names and folder names are looked at here, and file bytes only for
the content `fingerprint`; pixels are read by `cache`, which is also where
unreadable images are found and reported.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.cache import file_digests
from data_pipeline.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
TRAIN_NAMES = ("TRAIN", "train", "Train")
TEST_NAMES = ("TEST", "test", "Test")


@dataclass(frozen=True)
class ImageSet:
    """A list of image files with integer labels into a shared class list."""

    files: tuple[Path, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices) -> ImageSet:
        return ImageSet(tuple(self.files[i] for i in indices), tuple(self.labels[i] for i in indices))


@dataclass(frozen=True)
class DataIndex:
    """What a DATA folder holds: classes, the training part and (maybe) a TEST part."""

    root: Path
    layout: str  # "train_test" or "flat"
    classes: tuple[str, ...]
    train: ImageSet
    test: ImageSet | None  # None for the flat layout: split() makes the test part
    skipped: tuple[str, ...] = field(default=())  # non-image files, reported not read

    @property
    def name(self) -> str:
        return self.root.name


def _child_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _scan_classes(folder: Path, what: str) -> tuple[dict[str, list[Path]], list[str]]:
    """Image files per class folder, plus the non-image files that were skipped."""
    class_dirs = _class_dirs(folder)
    if len(class_dirs) < 2:
        found = ", ".join(d.name for d in class_dirs) or "none"
        raise DataError(
            f"{folder}: {what} needs at least 2 class folders (found {len(class_dirs)}: {found}); "
            "put each class's images in a folder named after the class"
        )
    per_class: dict[str, list[Path]] = {}
    skipped: list[str] = []
    for class_dir in class_dirs:
        images = []
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                if filename.startswith("."):
                    continue
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    images.append(path)
                else:
                    skipped.append(f"{path}: not an image file name (kept out)")
        if not images:
            raise DataError(
                f"{class_dir}: class folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "add images or remove the folder"
            )
        per_class[class_dir.name] = images
    return per_class, skipped


def _to_image_set(per_class: dict[str, list[Path]], classes: tuple[str, ...]) -> ImageSet:
    files, labels = [], []
    for label, name in enumerate(classes):
        files.extend(per_class[name])
        labels.extend([label] * len(per_class[name]))
    return ImageSet(tuple(files), tuple(labels))


def scan(root: str | os.PathLike, *, read_test: bool = True) -> DataIndex:
    """Index a DATA folder. Raises `DataError` with a one-line reason on bad layout.

    ``read_test=False`` lists TEST's class folder names only (to check they match
    TRAIN) and never lists or opens a TEST image: a search calls it that way.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"DATA={root}: folder does not exist; point DATA at a folder of class folders")
    if not root.is_dir():
        raise DataError(f"DATA={root}: not a folder; point DATA at a folder of class folders")

    train_dir, test_dir = _child_dir(root, TRAIN_NAMES), _child_dir(root, TEST_NAMES)
    if train_dir is None and test_dir is not None:
        raise DataError(f"{root}: has {test_dir.name}/ but no TRAIN/ folder; add TRAIN/<class>/ folders")
    if train_dir is None:
        per_class, skipped = _scan_classes(root, "DATA")
        classes = tuple(per_class)
        return DataIndex(root, "flat", classes, _to_image_set(per_class, classes), None, tuple(skipped))

    per_class, skipped = _scan_classes(train_dir, "TRAIN")
    classes = tuple(per_class)
    if test_dir is None:
        raise DataError(f"{root}: has TRAIN/ but no TEST/ folder; add TEST/<class>/ or use the flat ROOT/<class>/ layout")
    test_classes = tuple(d.name for d in _class_dirs(test_dir))
    if test_classes != classes:
        missing = sorted(set(classes) - set(test_classes))
        extra = sorted(set(test_classes) - set(classes))
        detail = "; ".join(
            part for part in (
                f"missing in TEST: {', '.join(missing)}" if missing else "",
                f"not in TRAIN: {', '.join(extra)}" if extra else "",
            ) if part
        )
        raise DataError(f"{test_dir}: class folders differ from TRAIN ({detail}); TRAIN and TEST need the same classes")
    test = None
    if read_test:
        test_per_class, test_skipped = _scan_classes(test_dir, "TEST")
        test = _to_image_set(test_per_class, classes)
        skipped += test_skipped
    return DataIndex(root, "train_test", classes, _to_image_set(per_class, classes), test, tuple(skipped))


FINGERPRINT_RULE = "content"  # recorded beside a study's fingerprint; studies made before it used file times


def fingerprint(images: ImageSet, root: Path, cache_dir: Path | None = None) -> str:
    """A short hash of the file list (relative paths, labels) and each file's content.

    Changes whenever a file is added, removed, relabelled, replaced or edited,
    so caches and studies keyed by it never mix two versions of a data set;
    an identical copy of the data (restored backup, new server, another mount)
    keeps it. File hashes are memoised in the decode cache folder by path,
    size, mtime, ctime and inode (`data_pipeline.cache.file_digests`), so only
    the first run reads every file.
    """
    digest = hashlib.sha256(f"{FINGERPRINT_RULE}\n".encode())
    for path, label, file_digest in zip(images.files, images.labels, file_digests(images.files, cache_dir)):
        digest.update(f"{os.path.relpath(path, root)}\0{label}\0{file_digest}\n".encode())
    return digest.hexdigest()[:16]


def time_fingerprint(images: ImageSet, root: Path) -> str:
    """The fingerprint studies recorded before content hashing (file list, sizes and mtimes): kept only to
    recognise such a study on its unchanged data (`fingerprint_change`)."""
    digest = hashlib.sha256()
    for path, label in zip(images.files, images.labels):
        stat = path.stat()
        rel = os.path.relpath(path, root)
        digest.update(f"{rel}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def fingerprint_change(recorded: str, rule: str | None, images: ImageSet, root: Path, now: str) -> str | None:
    """None when ``images`` are the data a study recorded as ``recorded`` (by ``rule``, None for studies made
    before content fingerprints), else why not, as a clause for the caller's refusal."""
    if rule == FINGERPRINT_RULE:
        return None if recorded == now else f"fingerprint {recorded} ≠ {now}"
    if recorded == time_fingerprint(images, root):
        return None  # an older study on files untouched since: the same data
    return (f"its fingerprint {recorded} was made by an older hematune from file modification times, which differ "
            "now: if the files were only copied, copy them again keeping their times (cp -p, rsync -t)")
