"""The same code trains on another Keras backend, and its model loads on the default one."""
import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import optuna
import pytest

from search.artifacts import model_path

pytestmark = pytest.mark.integration


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed (pip install jax)")
def test_search_runs_on_jax_and_its_model_loads_on_the_default_backend(make_dataset, tmp_path):
    root = make_dataset(classes=3, groups=5, per_group=4)
    studies = tmp_path / "studies"
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run(
        [sys.executable, "-m", "search", "search", "--data", str(root), "--studies-dir", str(studies),
         "--study", "jax", "--trials", "1", "--max-epochs", "1", "--fix", "image_size=32 blocks=2"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    study = optuna.load_study(study_name="jax", storage=f"sqlite:///{studies / 'hematune.db'}")
    (trial,) = study.trials
    assert trial.user_attrs["backend"] == "jax"
    model = keras.saving.load_model(model_path(studies, "jax", trial.number), safe_mode=True)
    x = np.zeros((2, 32, 32, 3), dtype="float32")
    assert keras.backend.backend() != "jax"
    assert np.asarray(model.predict(x, verbose=0)).shape == (2, 3)
    assert "jax" in trial.user_attrs["versions"] and "keras" in trial.user_attrs["versions"]
