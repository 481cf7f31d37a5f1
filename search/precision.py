"""PRECISION=: which Keras dtype policy a trial trains in.

Mixed precision computes in 16 bits and keeps the weights in float32: on a GPU
with tensor cores that roughly halves the epoch time (measured on an H100:
1.5 s → 0.7 s per epoch, ../shared/gpu/README.md). ``auto`` picks, from the
device text ``search.environment.device_description()`` gives:

- ``mixed_bfloat16`` on a GPU with bfloat16 (compute capability 8.0 or more:
  A100, H100, RTX 30xx and later) — same range as float32, no loss scaling;
- ``mixed_float16`` on older GPUs (Keras 3 wraps the optimizer in a
  ``LossScaleOptimizer`` itself when the model's policy is mixed_float16);
- ``float32`` on a CPU, where 16-bit math brings no speed.

Every family's last layer is a float32 softmax (``models/common.py``), so the
probabilities, the loss and the saved model's outputs stay float32 whatever
the policy. This module imports Keras only inside ``precision_policy``, so the
CLI can validate the setting cheaply.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from search.errors import SearchConfigError

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
BFLOAT16_MIN_CAPABILITY = (8, 0)  # Ampere: the first NVIDIA GPUs with bfloat16 tensor cores
_CAPABILITY = re.compile(r"compute capability (\d+)\.(\d+)")


def check_precision(requested: str) -> None:
    """Refuse an unknown PRECISION= value in one line naming the choices."""
    if requested not in PRECISIONS:
        raise SearchConfigError(f"PRECISION={requested}: choose one of {', '.join(PRECISIONS)}")


def resolve_precision(requested: str, device: str) -> str:
    """The Keras dtype policy for ``requested`` on ``device`` ("gpu: …" or "cpu: …").

    An explicit policy is kept as asked (mixed_bfloat16 on a CPU works, slowly);
    ``auto`` follows the device. A GPU whose compute capability the text does
    not give gets mixed_float16: it runs on every GPU with tensor cores.
    """
    check_precision(requested)
    if requested != "auto":
        return requested
    if not device.startswith("gpu:"):
        return "float32"
    match = _CAPABILITY.search(device)
    if match and (int(match.group(1)), int(match.group(2))) >= BFLOAT16_MIN_CAPABILITY:
        return "mixed_bfloat16"
    return "mixed_float16"


@contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Build and train under Keras' global dtype policy ``name``; restore the previous one after.

    Layers take the global policy when they are created, so the model must be
    built inside this block; restoring it keeps the next trial (perhaps in
    another precision) and anything else in the process unaffected.
    """
    check_precision(name)
    if name == "auto":
        raise SearchConfigError("PRECISION=auto must be resolved first (search.precision.resolve_precision)")
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
