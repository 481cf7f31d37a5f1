"""Augmentation as one Keras layer, driven by one strength in [0, 1].

The layer sits inside the model graph, so it runs on the accelerator, on any
Keras backend, inside the compiled training step. It is written with
``keras.ops`` and ``keras.random`` only: Keras' own ``RandomRotation``,
``RandomZoom`` and ``RandomTranslation`` declare ``supports_jit = False``,
which on JAX switches XLA off for the *whole model* (every training step then
runs op by op, 25× slower on an H100). Here all geometry is one affine
resampling per image (``keras.ops.image.affine_transform``), which compiles.

One knob keeps the search space small: 0 means no augmentation, 1 the
strongest transform that still keeps a cell recognisable (``make
augment-preview`` draws them). Per image, at strength ``s > 0``:

- one of the 8 dihedral symmetries (flips and quarter turns): blood-cell crops
  have no orientation, and on the square input these are exact resamplings;
- rotation by a further ±45°·s (at 1.0 every angle is equally likely),
  zoom ±20 %·s, translation ±10 %·s of the side on each axis, reflect fill;
- contrast ×(1 ± 0.3·s) around the image's channel means, brightness
  ±0.2·s·255, hue ±0.025·s of the colour circle (±9°·s): stain and lighting
  differ between labs. Values stay in the 0–255 range.

Unlike Keras' random layers, this one augments only when ``training`` is
true: a bare ``model(x)`` call or ``predict`` sees the image unchanged.
"""
from __future__ import annotations

import math

import keras
from keras import ops

# Per-transform maximum at strength 1.0.
MAX_ROTATION_DEGREES = 45.0  # on top of the quarter turns, so 1.0 covers every angle
MAX_ZOOM = 0.2  # fraction of the side sampled more or less
MAX_TRANSLATION = 0.1  # fraction of the side, each axis
MAX_CONTRAST = 0.3
MAX_BRIGHTNESS = 0.2  # fraction of the 0–255 range
MAX_HUE = 0.025  # fraction of the hue circle

_QUARTER_COS = (1.0, 0.0, -1.0, 0.0)  # exact cos/sin of k·90°, so quarter turns land on pixel centres
_QUARTER_SIN = (0.0, 1.0, 0.0, -1.0)


@keras.saving.register_keras_serializable(package="hematune")
class CellAugmentation(keras.layers.Layer):
    """Random geometry and colour per image, only while training.

    Computes in float32 (``dtype="float32"``) whatever the global precision
    policy: resampling and HSV round trips in bfloat16 would shift colours.
    Draws come from one seeded ``SeedGenerator``, whose state advances each
    step inside the compiled function, so every image in every step gets its
    own transform and the same seed replays the same sequence.
    """

    def __init__(self, strength: float = 0.0, seed: int = 0, **kwargs):
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"aug_strength={strength}: must be between 0 and 1")
        kwargs.setdefault("name", "augmentation")
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        # TensorFlow has no XLA kernel for the affine resampling (ImageProjectiveTransformV3): Keras' "auto"
        # would XLA-compile the model on a TensorFlow GPU and fail. There it runs as TensorFlow graph ops, as
        # Keras' own random layers do everywhere; JAX compiles it.
        self.supports_jit = keras.backend.backend() != "tensorflow"
        self.strength = float(strength)
        self.seed = int(seed)
        self.generator = keras.random.SeedGenerator(self.seed)

    def call(self, images, training=None):
        if not training or self.strength == 0:
            return images
        images = ops.cast(images, "float32")
        draws = keras.random.uniform((ops.shape(images)[0], 9), seed=self.generator)
        images = ops.image.affine_transform(images, self._geometry(draws[:, :6], ops.shape(images)[1]),
                                            interpolation="bilinear", fill_mode="reflect")
        return self._colour(images, draws[:, 6:])

    def _geometry(self, u, size):
        """Per-image flat affine rows (output pixel → input pixel), about the image centre."""
        s = self.strength
        quarter = ops.cast(ops.minimum(ops.floor(u[:, 0] * 4), 3), "int32")
        flip = ops.where(u[:, 1] < 0.5, -1.0, 1.0)
        theta = (2 * u[:, 2] - 1) * (MAX_ROTATION_DEGREES * s * math.pi / 180)
        scale = 1 + (2 * u[:, 3] - 1) * (MAX_ZOOM * s)
        size = ops.cast(size, "float32")
        shift_x = (2 * u[:, 4] - 1) * (MAX_TRANSLATION * s) * size
        shift_y = (2 * u[:, 5] - 1) * (MAX_TRANSLATION * s) * size
        cos_q, sin_q = ops.take(ops.array(_QUARTER_COS), quarter), ops.take(ops.array(_QUARTER_SIN), quarter)
        cos = cos_q * ops.cos(theta) - sin_q * ops.sin(theta)
        sin = sin_q * ops.cos(theta) + cos_q * ops.sin(theta)
        a0, a1 = scale * cos * flip, -scale * sin
        b0, b1 = scale * sin * flip, scale * cos
        centre = (size - 1) / 2
        a2 = centre - (a0 + a1) * centre + shift_x
        b2 = centre - (b0 + b1) * centre + shift_y
        zeros = ops.zeros_like(a0)
        return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)

    def _colour(self, images, u):
        s = self.strength
        contrast = 1 + (2 * u[:, 0] - 1) * (MAX_CONTRAST * s)
        brightness = (2 * u[:, 1] - 1) * (MAX_BRIGHTNESS * s * 255)
        hue = (2 * u[:, 2] - 1) * (MAX_HUE * s)
        per_image = (-1, 1, 1, 1)
        mean = ops.mean(images, axis=(1, 2), keepdims=True)
        images = (images - mean) * ops.reshape(contrast, per_image) + mean + ops.reshape(brightness, per_image)
        hsv = ops.image.rgb_to_hsv(ops.clip(images, 0, 255) / 255)
        shifted = ops.mod(hsv[..., 0] + ops.reshape(hue, (-1, 1, 1)), 1.0)
        rgb = ops.image.hsv_to_rgb(ops.stack([shifted, hsv[..., 1], hsv[..., 2]], axis=-1))
        return ops.clip(rgb * 255, 0, 255)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "strength": self.strength, "seed": self.seed}


def build_augmentation(strength: float, seed: int = 0) -> keras.layers.Layer:
    """The ``augmentation`` layer every model starts with (the identity at strength 0).

    Every model has it whatever the trial chose, so artifacts can find and
    drop it by name (``models.common.without_augmentation``).
    """
    return CellAugmentation(strength, seed=seed, name="augmentation")
