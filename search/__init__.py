"""The study runner: search spaces, the trial objective, storage, budget, CLI.

Composes `data_pipeline` (images → arrays, split) and `models` (family →
Keras model) under Optuna.
"""
