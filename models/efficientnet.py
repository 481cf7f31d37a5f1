"""EfficientNet B0–B4 (keras.applications), fine-tuned with a new head.

EfficientNet carries its own rescaling and normalisation and expects 0–255
inputs, so no scaling layer is added here.
"""
from __future__ import annotations

import keras

from models.backbones import Variant, build_backbone_model, pick

VARIANTS = {
    f"b{i}": Variant(f"EfficientNetB{i}", getattr(keras.applications, f"EfficientNetB{i}"), lambda: [])
    for i in range(5)
}


def build(params: dict, *, num_classes: int, image_size: int, weights: str = "imagenet", seed: int = 0):
    variant = pick(VARIANTS, str(params.get("variant", "b0")), "efficientnet")
    return build_backbone_model("efficientnet", variant, params, num_classes=num_classes,
                                image_size=image_size, weights=weights, seed=seed)
