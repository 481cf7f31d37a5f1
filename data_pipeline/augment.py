"""Augmentation as Keras preprocessing layers, driven by one strength in [0, 1].

The layers sit inside the model graph, so they run on the accelerator, on any
Keras backend, and only while training (Keras random layers are the identity
at inference). One knob keeps the search space small: 0 means no augmentation,
1 the strongest transform that still keeps a cell recognisable. Blood-cell
crops have no preferred orientation, so flips and full rotations are safe;
colour jitter stands in for stain and lighting differences between labs.
"""
from __future__ import annotations

import keras

# Per-transform maximum at strength 1.0.
MAX_ROTATION = 0.5  # fraction of a full turn either way (0.5 = ±180°)
MAX_ZOOM = 0.2
MAX_TRANSLATION = 0.1
MAX_CONTRAST = 0.3
MAX_BRIGHTNESS = 0.2
MAX_HUE = 0.05


def build_augmentation(strength: float, seed: int = 0) -> keras.layers.Layer:
    """A Sequential of random layers for images in the 0–255 range.

    ``strength == 0`` gives an identity block of the same name, so every model
    has an ``augmentation`` layer whatever the trial chose.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"aug_strength={strength}: must be between 0 and 1")
    if strength == 0:
        return keras.Sequential([keras.layers.Identity()], name="augmentation")
    s = float(strength)
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
            keras.layers.RandomRotation(MAX_ROTATION * s, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomZoom(MAX_ZOOM * s, fill_mode="reflect", seed=seed + 2),
            keras.layers.RandomTranslation(MAX_TRANSLATION * s, MAX_TRANSLATION * s, fill_mode="reflect", seed=seed + 3),
            keras.layers.RandomContrast(MAX_CONTRAST * s, value_range=(0, 255), seed=seed + 4),
            keras.layers.RandomBrightness(MAX_BRIGHTNESS * s, value_range=(0, 255), seed=seed + 5),
            keras.layers.RandomHue(MAX_HUE * s, value_range=(0, 255), seed=seed + 6),
        ],
        name="augmentation",
    )
