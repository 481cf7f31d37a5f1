"""Errors the CLI turns into one line and a non-zero exit, without a traceback.

Imports no backend: code that only opens a storage can use these cheaply.
"""
from data_pipeline.errors import DataError
from models.errors import ModelConfigError


class SearchConfigError(ValueError):
    """A search setting that cannot work (budget, storage, study, space…)."""


USER_ERRORS = (DataError, ModelConfigError, SearchConfigError)
