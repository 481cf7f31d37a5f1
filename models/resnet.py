"""ResNet50 (caffe-style BGR mean-subtracted inputs) and ResNet50V2 (−1…1 inputs)."""
from __future__ import annotations

import keras

from models.backbones import Variant, build_backbone_model, pick
from models.common import caffe_preprocessing, symmetric_scaling

VARIANTS = {
    "resnet50": Variant("ResNet50", keras.applications.ResNet50, lambda: [caffe_preprocessing()]),
    "resnet50v2": Variant("ResNet50V2", keras.applications.ResNet50V2, lambda: [symmetric_scaling()]),
}


def build(params: dict, *, num_classes: int, image_size: int, weights: str = "imagenet", seed: int = 0):
    variant = pick(VARIANTS, str(params.get("variant", "resnet50")), "resnet")
    return build_backbone_model("resnet", variant, params, num_classes=num_classes,
                                image_size=image_size, weights=weights, seed=seed)
