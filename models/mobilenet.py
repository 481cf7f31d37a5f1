"""MobileNet V1 (with width multiplier alpha), V2, V3 small and large.

V1/V2 expect inputs in −1…1; V3 includes its own preprocessing for 0–255.
Parameters: ``version`` and ``alpha_<version>`` (each version has its own
width multipliers, so each gets its own searched parameter).
"""
from __future__ import annotations

import keras

from models.backbones import Variant, build_backbone_model
from models.common import ModelConfigError, symmetric_scaling

ALPHAS = {
    "v1": (0.25, 0.5, 0.75, 1.0),
    "v2": (0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
    "v3small": (0.75, 1.0),
    "v3large": (0.75, 1.0),
}


def variant_for(version: str, alpha: float) -> Variant:
    if version not in ALPHAS:
        raise ModelConfigError(f"mobilenet: unknown version {version!r}; choose one of {', '.join(ALPHAS)}")
    if alpha not in ALPHAS[version]:
        raise ModelConfigError(f"mobilenet {version}: alpha={alpha} not available; choose one of {ALPHAS[version]}")
    if version == "v1":
        return Variant(f"MobileNet(alpha={alpha})", keras.applications.MobileNet, lambda: [symmetric_scaling()],
                       kwargs={"alpha": alpha})
    if version == "v2":
        return Variant(f"MobileNetV2(alpha={alpha})", keras.applications.MobileNetV2, lambda: [symmetric_scaling()],
                       kwargs={"alpha": alpha})
    constructor = keras.applications.MobileNetV3Small if version == "v3small" else keras.applications.MobileNetV3Large
    return Variant(f"MobileNetV3{version[2:].capitalize()}(alpha={alpha})", constructor, lambda: [],
                   kwargs={"alpha": alpha, "include_preprocessing": True})


def build(params: dict, *, num_classes: int, image_size: int, weights: str = "imagenet", seed: int = 0):
    version = str(params.get("version", "v2"))
    alpha = float(params.get(f"alpha_{version}", params.get("alpha", 1.0)))
    return build_backbone_model("mobilenet", variant_for(version, alpha), params, num_classes=num_classes,
                                image_size=image_size, weights=weights, seed=seed)
