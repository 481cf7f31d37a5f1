"""A from-scratch CNN: the baseline every pretrained backbone has to beat.

Searched: number of blocks, base width, kernel size, batch-norm, dropout and
dense head size. Each block is two convolutions and a 2×2 max-pool; width
doubles per block (capped at 256), the usual VGG-style progression.
"""
from __future__ import annotations

import keras

from models.common import BuiltModel, ModelConfigError, assemble

MAX_WIDTH = 256


def build(params: dict, *, num_classes: int, image_size: int, weights: str = "none", seed: int = 0) -> BuiltModel:
    blocks = int(params.get("blocks", 3))
    if image_size < 2 ** blocks * 2:
        raise ModelConfigError(f"image_size={image_size} is too small for {blocks} pooling blocks; use at least {2 ** blocks * 2}")
    if weights not in ("none", "imagenet", "random", ""):
        raise ModelConfigError(f"WEIGHTS={weights}: the cnn family trains from scratch; a weights file does not apply")
    base_width = int(params.get("base_width", 32))
    kernel_size = int(params.get("kernel_size", 3))
    batch_norm = bool(params.get("batch_norm", True))

    def body(x):
        for block in range(blocks):
            width = min(MAX_WIDTH, base_width * 2 ** block)
            for conv in range(2):
                x = keras.layers.Conv2D(width, kernel_size, padding="same", use_bias=not batch_norm,
                                        name=f"block{block + 1}_conv{conv + 1}")(x)
                if batch_norm:
                    x = keras.layers.BatchNormalization(name=f"block{block + 1}_bn{conv + 1}")(x)
                x = keras.layers.Activation("relu", name=f"block{block + 1}_relu{conv + 1}")(x)
            x = keras.layers.MaxPooling2D(2, name=f"block{block + 1}_pool")(x)
        return x

    model = assemble(
        image_size=image_size, num_classes=num_classes, aug_strength=float(params.get("aug_strength", 0.0)),
        seed=seed, scaling=[keras.layers.Rescaling(1.0 / 255, name="scale_to_unit")], body=body,
        head_units=int(params.get("dense_units", 128)), dropout=float(params.get("dropout", 0.3)), name="cnn",
    )
    return BuiltModel(model, "random init (from-scratch CNN)")
