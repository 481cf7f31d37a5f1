"""Checks of the resolved search space that would otherwise fail every trial.

A trial that cannot be built fails and is recorded, and the run stops after a
few of those — but when *every* possible trial would fail the same way, the
user should hear it once, before a study is created or touched. Today that is
the image size (the pretrained backbones need at least 32 pixels, the CNN two
pixels per pooling step: ``models/backbones.py`` and ``models/cnn.py`` raise
the same limits at build time) and a WEIGHTS= file that does not exist.
"""
from __future__ import annotations

from models.common import resolve_weights
from search.errors import SearchConfigError
from search.space import SearchSpace

BACKBONE_MIN_SIZE = 32  # keras.applications' smallest input (models.backbones.Variant.min_size)


def _values(spec) -> list:
    """Every value a space entry can take (its two ends for a range)."""
    if not isinstance(spec, dict):
        return [spec]
    if spec["type"] == "categorical":
        return list(spec["choices"])
    return [spec["low"], spec["high"]]


def _min_size(family: str, section: dict) -> int:
    if family != "cnn":
        return BACKBONE_MIN_SIZE
    blocks = section["model"].get("blocks", section["training"].get("blocks", 3))
    return 2 ** int(min(_values(blocks))) * 2


def check_image_sizes(space: SearchSpace) -> None:
    """Refuse a space in which no image size is large enough for a family."""
    for family, section in space.families.items():
        spec = section["training"].get("image_size", section["model"].get("image_size"))
        if spec is None:
            continue
        largest, need = max(int(v) for v in _values(spec)), _min_size(family, section)
        if largest < need:
            raise SearchConfigError(f"image_size={largest}: too small for {family}; use at least {need} "
                                    "(FIX=image_size=… or the space file)")


def check(space: SearchSpace, weights: str | None) -> None:
    """Everything here, in one call: the runner and the worker supervisor run it before opening the study."""
    check_image_sizes(space)
    if weights is not None:
        for family in space.families:
            resolve_weights(weights, family)  # raises ModelConfigError for a WEIGHTS= file that does not exist
