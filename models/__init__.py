"""Model families: each builds a Keras 3 model from a dict of trial parameters.

Knows nothing of data files or studies. `models.registry` maps MODEL= names to
families; every family exposes ``build(params, *, num_classes, image_size,
weights, seed) -> BuiltModel``. Nothing is imported here, so ``models.errors``
can be used without loading Keras.
"""
