"""From a folder of images to cached uint8 arrays and a group-aware split.

Knows nothing of Optuna or models: `search` composes it with them.
"""
from data_pipeline.errors import DataError

__all__ = ["DataError"]
