"""What every family shares: the model wrapper, the head, weights and fine-tuning.

A model is ``uint8-range image → augmentation → family scaling → body → head``,
built from standard Keras layers plus hematune's augmentation layer; the
``.keras`` files hematune saves drop the latter (``without_augmentation``), so
they load in safe mode on any backend without hematune installed.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from data_pipeline.augment import build_augmentation
from data_pipeline.errors import first_line
from models.errors import ModelConfigError  # noqa: F401 - re-exported for the families

AUGMENTATION = "augmentation"  # the layer name build_augmentation gives its layer


@dataclass
class BuiltModel:
    """A compiled-ready model plus what the trainer and the study need to know."""

    model: keras.Model
    weights_origin: str
    backbone: keras.Model | None = None  # pretrained part, frozen at first; None for from-scratch models


def keras_cache_dir() -> Path:
    """Where keras.applications looks for downloaded weights ($KERAS_HOME/models)."""
    try:
        from keras.src.backend.config import keras_home  # what Keras itself resolved at import
        return Path(keras_home()) / "models"
    except ImportError:
        return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def caffe_preprocessing(name: str = "caffe_preprocessing") -> keras.layers.Layer:
    """RGB → BGR and ImageNet mean subtraction, as a frozen 1×1 convolution.

    ResNet50 and VGG16 expect this ("caffe" mode). A convolution with a fixed
    permutation kernel and bias is a standard layer, unlike a Lambda, so the
    saved model stays loadable in safe mode.
    """
    kernel = np.zeros((1, 1, 3, 3), dtype="float32")
    for out_channel, in_channel in enumerate((2, 1, 0)):
        kernel[0, 0, in_channel, out_channel] = 1.0
    bias = -np.array([103.939, 116.779, 123.68], dtype="float32")
    return keras.layers.Conv2D(
        3, 1, name=name, trainable=False,
        kernel_initializer=keras.initializers.Constant(kernel),
        bias_initializer=keras.initializers.Constant(bias),
    )


def symmetric_scaling(name: str = "scale_to_pm1") -> keras.layers.Layer:
    """0–255 → −1…1, what MobileNet V1/V2 and ResNet50V2 were trained on."""
    return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=name)


def assemble(
    *,
    image_size: int,
    num_classes: int,
    aug_strength: float,
    seed: int,
    scaling: list[keras.layers.Layer],
    body: Callable,
    head_units: int,
    dropout: float,
    name: str,
) -> keras.Model:
    """Wrap a body into the full classifier every family shares."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = build_augmentation(aug_strength, seed=seed)(inputs)
    for layer in scaling:
        x = layer(x)
    x = body(x)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    if head_units:
        x = keras.layers.Dense(head_units, activation="relu", name="head_dense")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def without_augmentation(model: keras.Model) -> keras.Model:
    """The same model (shared weights) with its augmentation layer replaced by an identity.

    Files hematune saves are for inference: they carry no augmentation at
    all. The augmentation is hematune's own layer class, so a file that kept
    it would load (in safe mode) only where hematune is installed; with a
    standard identity in its place any Keras can load it.
    """
    def swap(layer):
        if layer.name == AUGMENTATION:
            return keras.Sequential([keras.layers.Identity()], name=AUGMENTATION)
        return layer

    return keras.models.clone_model(model, clone_function=swap)


def resolve_weights(weights: str, family: str) -> tuple[str | None, str]:
    """WEIGHTS= value → (argument for keras.applications, human-readable origin)."""
    if weights == "imagenet":
        return "imagenet", f"imagenet (Keras cache {keras_cache_dir()})"
    if weights in ("none", "random", ""):
        return None, "random init (WEIGHTS=none)"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelConfigError(f"WEIGHTS={weights}: file does not exist; give imagenet, none or a path to a weights file")
    return str(path), f"file {path}"


def load_application(constructor: Callable, label: str, weights: str | None, **kwargs) -> keras.Model:
    """Call a keras.applications constructor, turning an offline failure into one clear line.

    Keras looks for ImageNet weights in ``$KERAS_HOME/models/`` before it tries
    the network. On an offline machine the download fails: say which file to
    put where instead of falling back to random weights.
    """
    try:
        return constructor(weights=weights, **kwargs)
    except ValueError as exc:
        raise ModelConfigError(f"{label}: {first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - keras raises a bare Exception for fetch failures
        message = str(exc)
        url = re.search(r"https?://\S+?\.h5", message)
        if weights == "imagenet" and (url or "fetch failure" in message.lower()):
            file_name = url.group(0).rsplit("/", 1)[-1] if url else "the weights file"
            raise ModelConfigError(
                f"{label}: ImageNet weights not found offline; place {file_name} in {keras_cache_dir()}/ "
                f"(download: {url.group(0) if url else 'see keras.applications'}) or run with WEIGHTS=none"
            ) from None
        raise


def unfreeze_top(backbone: keras.Model, fraction: float) -> int:
    """Make the top ``fraction`` of the backbone's layers trainable; return how many.

    Batch-norm layers stay frozen: the backbone is called with training=False,
    and their statistics were learned on far more images than a lab has.
    """
    layers = [layer for layer in backbone.layers if layer.weights]
    count = int(round(len(layers) * fraction))
    backbone.trainable = True
    for i, layer in enumerate(layers):
        layer.trainable = i >= len(layers) - count and not isinstance(layer, keras.layers.BatchNormalization)
    return count
