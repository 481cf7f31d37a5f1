"""VGG16 with caffe-style (BGR, ImageNet mean subtracted) inputs."""
from __future__ import annotations

import keras

from models.backbones import Variant, build_backbone_model
from models.common import caffe_preprocessing

VGG16 = Variant("VGG16", keras.applications.VGG16, lambda: [caffe_preprocessing()])


def build(params: dict, *, num_classes: int, image_size: int, weights: str = "imagenet", seed: int = 0):
    return build_backbone_model("vgg", VGG16, params, num_classes=num_classes,
                                image_size=image_size, weights=weights, seed=seed)
