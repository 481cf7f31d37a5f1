"""The error type for model settings that cannot work, kept free of Keras so the
CLI and storage code can catch it without importing a backend."""
from data_pipeline.errors import HematuneError


class ModelConfigError(HematuneError):
    """A model setting that cannot work (bad weights path, missing weights, image too small…)."""
