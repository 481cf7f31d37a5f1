"""Model families: each builds a Keras 3 model from a dict of trial parameters.

Knows nothing of data files or studies. `models.registry` maps MODEL= names to
families; every family exposes ``build(params, *, num_classes, image_size,
weights, seed) -> BuiltModel``.
"""
from models.common import BuiltModel, ModelConfigError
from models.registry import FAMILIES, build_model, family_names

__all__ = ["BuiltModel", "ModelConfigError", "FAMILIES", "build_model", "family_names"]
