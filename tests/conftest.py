"""Shared fixtures: tiny synthetic image sets made here, and a slice of the reference set.

Synthetic classes differ by colour and by a drawn shape, so a small model can
actually learn them; file names follow the reference set's ``_<group>_<n>``
pattern so the group-aware split has groups to respect.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

REFERENCE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "blood-cells"
SHARED_WEIGHTS = REFERENCE.parent.parent / "weights"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Keras reads KERAS_HOME once, at import: give the whole session an empty one so
# no test sees weights a developer happens to have in ~/.keras.
KERAS_HOME = Path(tempfile.mkdtemp(prefix="hematune-keras-home-"))
os.environ["KERAS_HOME"] = str(KERAS_HOME)

COLOURS = [(200, 60, 60), (60, 160, 60), (60, 60, 200), (200, 160, 40), (150, 60, 180), (40, 170, 170),
           (120, 120, 120), (230, 120, 170)]


def synthetic_image(label: int, seed: int, size=(40, 30)) -> Image.Image:
    rng = random.Random(seed)
    background = tuple(min(255, c // 3 + rng.randint(0, 30)) for c in COLOURS[label % len(COLOURS)])
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    w, h = size
    box = [rng.randint(2, w // 3), rng.randint(2, h // 3), rng.randint(2 * w // 3, w - 2), rng.randint(2 * h // 3, h - 2)]
    if label % 2:
        draw.ellipse(box, fill=COLOURS[label % len(COLOURS)])
    else:
        draw.rectangle(box, fill=COLOURS[label % len(COLOURS)])
    return image


def make_class_folder(folder: Path, label: int, groups: int, per_group: int, *, group_offset=0, ext=".png",
                      size=(40, 30)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for g in range(group_offset, group_offset + groups):
        for n in range(per_group):
            path = folder / f"_{g}_{n}{ext}"
            synthetic_image(label, seed=label * 10_000 + g * 100 + n, size=size).save(path)
            files.append(path)
    return files


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Processes a test started with tests.worker_tools.start do not outlive it, even when it fails."""
    yield
    from tests.worker_tools import kill_leftovers

    kill_leftovers()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decode cache (no state shared between tests)."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("HEMATUNE_CACHE", str(cache))
    return cache


@pytest.fixture
def make_dataset(tmp_path):
    """make_dataset(classes=3, layout="train_test", groups=4, per_group=3, ext=".png") -> root."""
    def _make(classes=3, layout="train_test", groups=4, per_group=3, ext=".png", size=(40, 30), name="cells"):
        root = tmp_path / name
        names = [f"class{c}" for c in range(classes)]
        for label, cls in enumerate(names):
            if layout == "train_test":
                make_class_folder(root / "TRAIN" / cls, label, groups, per_group, ext=ext, size=size)
                make_class_folder(root / "TEST" / cls, label, 2, per_group, group_offset=100, ext=ext, size=size)
            else:
                make_class_folder(root / cls, label, groups, per_group, ext=ext, size=size)
        return root
    return _make


@pytest.fixture(scope="session")
def reference_slice(tmp_path_factory) -> Path:
    """A small TRAIN/TEST slice of the reference set, as symlinks (nothing copied).

    Per class: 6 source groups × 6 augmented copies in TRAIN, 2 × 3 in TEST.
    """
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE}")
    root = tmp_path_factory.mktemp("slice") / "blood-cells-slice"
    for part, n_groups, per_group in (("TRAIN", 6, 6), ("TEST", 2, 3)):
        for class_dir in sorted((REFERENCE / part).iterdir()):
            by_group: dict[str, list[Path]] = {}
            for path in sorted(class_dir.iterdir()):
                by_group.setdefault(path.name.split("_")[1], []).append(path)
            chosen = sorted(by_group, key=lambda g: -len(by_group[g]))[:n_groups]
            target = root / part / class_dir.name
            target.mkdir(parents=True)
            for group in chosen:
                for path in by_group[group][:per_group]:
                    (target / path.name).symlink_to(path)
    return root


@pytest.fixture
def offline_mobilenet_weights():
    """Place the shared MobileNet(alpha=0.25) ImageNet weights in the Keras cache, as an
    offline machine would; removed again after the test."""
    source = SHARED_WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5"
    if not source.is_file():
        pytest.skip(f"shared weights not found at {source}")
    models = KERAS_HOME / "models"
    models.mkdir(exist_ok=True)
    target = models / source.name
    target.symlink_to(source)
    yield target
    target.unlink()
