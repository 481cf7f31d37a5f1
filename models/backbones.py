"""Shared builder for the pretrained keras.applications families.

Each family module only says which constructors exist and how their inputs are
scaled; this builds ``augmentation → scaling → frozen backbone → new head``.
Fine-tuning (warm-up with the backbone frozen, then unfreezing its top part)
is driven by the trainer through ``BuiltModel.backbone``.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from models.common import BuiltModel, ModelConfigError, assemble, load_application, resolve_weights


@dataclass(frozen=True)
class Variant:
    """One keras.applications constructor and the input scaling it expects."""

    label: str
    constructor: Callable
    scaling: Callable[[], list]  # fresh scaling layers per model
    min_size: int = 32
    kwargs: dict | None = None


def build_backbone_model(family: str, variant: Variant, params: dict, *, num_classes: int,
                         image_size: int, weights: str, seed: int) -> BuiltModel:
    if image_size < variant.min_size:
        raise ModelConfigError(f"image_size={image_size} is too small for {variant.label}; use at least {variant.min_size}")
    weights_arg, origin = resolve_weights(weights, family)
    backbone = load_application(
        variant.constructor, variant.label, weights_arg,
        include_top=False, input_shape=(image_size, image_size, 3), **(variant.kwargs or {}),
    )
    backbone.trainable = False

    def body(x):
        return backbone(x, training=False)  # batch-norm stays in inference mode, also when unfrozen

    model = assemble(
        image_size=image_size, num_classes=num_classes, aug_strength=float(params.get("aug_strength", 0.0)),
        seed=seed, scaling=variant.scaling(), body=body, head_units=int(params.get("head_units", 0)),
        dropout=float(params.get("head_dropout", 0.2)), name=re.sub(r"[^a-z0-9_]+", "_", f"{family}_{variant.label}".lower()).strip("_"),
    )
    return BuiltModel(model, f"{origin}: {variant.label}", backbone=backbone)


def pick(variants: dict[str, Variant], key: str, family: str) -> Variant:
    try:
        return variants[key]
    except KeyError:
        raise ModelConfigError(f"{family}: unknown variant {key!r}; choose one of {', '.join(variants)}") from None
