"""One model file from several: the mean of K members, and test-time augmentation (TTA).

``build_ensemble(members)`` averages the members' softmax outputs;
``with_tta(model)`` averages a model's outputs over the 8 dihedral views of
its square input (identity, flips, quarter turns, transposes). Both return
one functional Keras model that takes the same uint8-range image as its
members, so it is saved as ONE ``.keras`` file and used exactly like a trial
model (``predict``, ``reports.evaluate``, a release, the server).

Why they are built this way:

* **Only standard Keras layers** (nested ``Functional`` members, ``Permute``,
  ``Dense``, ``Average``). A custom layer would load, even in safe mode, only
  where hematune is installed *and* its module was imported first — the
  server and a lab's own script would fail on it. Built from standard layers,
  the file loads with ``keras.saving.load_model(path, safe_mode=True)`` in any
  Keras 3 on any backend, like every other model file hematune writes.
* **Exact flips.** Keras has no deterministic flip layer, so a flip is a
  ``Permute`` that brings the flipped axis last, a frozen ``Dense`` whose
  kernel is the anti-identity (output *i* = input *n−1−i*, the only non-zero
  term, so nothing is rounded), and the ``Permute`` back. Quarter turns are a
  transpose (``Permute((2, 1, 3))``) composed with a flip. These layers
  compute in float32 whatever the precision policy; on a GPU that runs
  float32 matmuls as TF32 the pixel values 0–255 (8 bits) are still exact.
* **Inference only.** Members are stripped of their augmentation layer
  (``models.common.without_augmentation``) if they still carry hematune's
  random one, so the file never augments and never needs hematune.
* **float32 probabilities.** The mean is a float32 ``Average`` layer, so a
  bfloat16 policy cannot round the averaged probabilities.
"""
from __future__ import annotations

import keras
import numpy as np

from data_pipeline.augment import CellAugmentation
from models.common import without_augmentation
from models.errors import ModelConfigError

VIEWS = 8  # the dihedral group of the square: 4 rotations × (flipped or not)


def _inference_model(model: keras.Model) -> keras.Model:
    """The model without hematune's random augmentation layer (shared weights)."""
    if any(isinstance(layer, CellAugmentation) for layer in model.layers):
        return without_augmentation(model)
    return model


def _input_shape(model: keras.Model) -> tuple:
    shape = tuple(model.input_shape)
    if len(shape) != 4:
        raise ModelConfigError(f"model {model.name}: input shape {shape} is not (batch, height, width, channels)")
    return shape[1:]


def _renamed(model: keras.Model, name: str) -> keras.Model:
    """The same layers and weights as a functional model called ``name`` (names must be unique inside a model)."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelConfigError(f"model {model.name}: has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                               "an ensemble or TTA member takes one image and gives one probability vector")
    return keras.Model(model.inputs[0], model.outputs[0], name=name)


def build_ensemble(members: list[keras.Model], name: str = "ensemble") -> keras.Model:
    """One model whose output is the mean of the members' softmax outputs.

    All members must take the same input shape and predict the same number of
    classes (they are fold models of one configuration, or finalists at one
    image size). Averaging probabilities rather than logits keeps each
    member's calibration meaningful and needs nothing but the saved files.
    """
    if not members:
        raise ModelConfigError("ensemble: no member models given; pass at least one")
    shape = _input_shape(members[0])
    classes = int(members[0].output_shape[-1])
    for member in members[1:]:
        if _input_shape(member) != shape:
            raise ModelConfigError(f"ensemble: member {member.name} takes {_input_shape(member)}, the first takes "
                                   f"{shape}; members must share one input size")
        if int(member.output_shape[-1]) != classes:
            raise ModelConfigError(f"ensemble: member {member.name} predicts {member.output_shape[-1]} classes, "
                                   f"the first {classes}; members must share one label set")
    inputs = keras.Input(shape, name="image")
    outputs = [_renamed(_inference_model(member), f"member_{i}")(inputs) for i, member in enumerate(members)]
    if len(outputs) == 1:
        mean = keras.layers.Activation("linear", dtype="float32", name="mean_probabilities")(outputs[0])
    else:
        mean = keras.layers.Average(dtype="float32", name="mean_probabilities")(outputs)
    return keras.Model(inputs, mean, name=name)


def _flip(x, axis: int, size: int, name: str):
    """Reverse spatial ``axis`` (1 = rows, 2 = columns) of an NHWC tensor, exactly, with standard layers."""
    order = (3, 2, 1) if axis == 1 else (1, 3, 2)  # bring the flipped axis last (Permute's axes count from 1)
    reverse = keras.layers.Dense(size, use_bias=False, trainable=False, dtype="float32", name=f"{name}_reverse")
    x = keras.layers.Permute(order, dtype="float32", name=f"{name}_to_last")(x)
    x = reverse(x)
    reverse.set_weights([np.eye(size, dtype="float32")[::-1].copy()])
    return keras.layers.Permute(order, dtype="float32", name=f"{name}_back")(x)


def dihedral_views(x, size: int) -> list:
    """The 8 views of a square image batch: identity, row flip, column flip, both (= half turn),
    and the transposes of those four (the quarter turns and the two diagonal mirrors)."""
    rows = _flip(x, 1, size, "flip_rows")
    cols = _flip(x, 2, size, "flip_cols")
    both = _flip(rows, 2, size, "flip_both")
    plain = [x, rows, cols, both]
    transposed = [keras.layers.Permute((2, 1, 3), dtype="float32", name=f"transpose_{i}")(v) for i, v in enumerate(plain)]
    return plain + transposed


def with_tta(model: keras.Model, name: str | None = None) -> keras.Model:
    """``model`` averaged over the 8 dihedral views of its (square) input.

    A blood-cell crop has no orientation: the 8 views are the same cell, so
    averaging the model's probabilities over them removes the part of its
    error that depends on how the cell happened to lie. The result is
    invariant to flipping or turning its input (up to the order of a float
    sum), and equals ``model`` for a model that is itself invariant. It costs
    8 forward passes per image.
    """
    shape = _input_shape(model)
    if shape[0] != shape[1]:
        raise ModelConfigError(f"TTA: model {model.name} takes {shape[0]}×{shape[1]} images; the 8 flips and quarter "
                               "turns need a square input")
    inner = _renamed(_inference_model(model), "model")
    inputs = keras.Input(shape, name="image")
    outputs = [inner(view) for view in dihedral_views(inputs, int(shape[0]))]
    mean = keras.layers.Average(dtype="float32", name="mean_probabilities")(outputs)
    return keras.Model(inputs, mean, name=name or f"{model.name}_tta")
