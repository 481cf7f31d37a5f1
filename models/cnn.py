"""A from-scratch CNN: the baseline every pretrained backbone has to beat.

Searched: number of blocks, base width, kernel size, batch-norm, dropout and
dense head size. Each block is two convolutions and a 2×2 max-pool; width
doubles per block (capped at 256), the usual VGG-style progression.

Batch-norm keeps its moving statistics with momentum 0.9, not Keras' 0.99: a
trial takes only ~125 steps an epoch at a high learning rate, and at 0.99 the
statistics validation uses lag the weights by about 100 steps. Measured on
the default study's trial 2 (64 px, seeded, 2-core CPU; identical training
either way): group-val after epochs 1–4 was 0.21, 0.27, 0.33, 0.46 at 0.99
and 0.46, 0.45, 0.65, 0.86 at 0.9, while training accuracy rose 0.58 → 0.88.
At 0.99 the score the pruner and TPE see early is mostly that lag.
"""
from __future__ import annotations

import keras

from models.common import BuiltModel, ModelConfigError, assemble

MAX_WIDTH = 256
BN_MOMENTUM = 0.9  # see the module docstring


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
                    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{block + 1}_bn{conv + 1}")(x)
                x = keras.layers.Activation("relu", name=f"block{block + 1}_relu{conv + 1}")(x)
            x = keras.layers.MaxPooling2D(2, name=f"block{block + 1}_pool")(x)
        return x

    model = assemble(
        image_size=image_size, num_classes=num_classes, aug_strength=float(params.get("aug_strength", 0.0)),
        seed=seed, scaling=[keras.layers.Rescaling(1.0 / 255, name="scale_to_unit")], body=body,
        head_units=int(params.get("dense_units", 128)), dropout=float(params.get("dropout", 0.3)), name="cnn",
    )
    return BuiltModel(model, "random init (from-scratch CNN)")
