"""The ensemble and TTA model files: one .keras each, safe-mode loadable anywhere, and exactly what they claim."""
from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from data_pipeline.augment import CellAugmentation
from models.ensemble import build_ensemble, with_tta
from models.errors import ModelConfigError
from models.registry import build_model
from reports.evaluate import load_model
from search.precision import precision_policy

SIZE = 16
TINY_CNN = {"blocks": 1, "base_width": 4, "dense_units": 8, "dropout": 0.0, "aug_strength": 0.7}


def tiny_cnn(seed: int, size: int = SIZE, classes: int = 4) -> keras.Model:
    """A member as training leaves it: with hematune's random augmentation layer still inside."""
    return build_model("cnn", TINY_CNN, num_classes=classes, image_size=size, weights="none", seed=seed).model


def images(n: int = 6, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype("float32")


def dihedral(x: np.ndarray) -> list[np.ndarray]:
    """The 8 views computed independently, with numpy."""
    turns = [np.rot90(x, k, axes=(1, 2)) for k in range(4)]
    return [np.ascontiguousarray(v) for v in turns + [t[:, :, ::-1] for t in turns]]


def probs(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))


def round_trip(model: keras.Model, tmp_path, name: str) -> keras.Model:
    path = tmp_path / f"{name}.keras"
    model.save(path)
    return load_model(path)


def test_ensemble_file_is_the_mean_of_its_members(tmp_path):
    members = [tiny_cnn(seed) for seed in range(3)]
    loaded = round_trip(build_ensemble(members), tmp_path, "ensemble")
    x = images()
    expected = np.mean([probs(m, x) for m in members], axis=0)
    np.testing.assert_allclose(probs(loaded, x), expected, rtol=1e-6, atol=1e-7)
    assert not any(isinstance(layer, CellAugmentation) for m in loaded.layers for layer in getattr(m, "layers", [m]))
    # members differ, so the mean is not any one of them
    assert np.abs(probs(members[0], x) - expected).max() > 1e-4


def test_an_ensemble_of_one_is_that_model(tmp_path):
    member = tiny_cnn(0)
    x = images()
    np.testing.assert_allclose(probs(round_trip(build_ensemble([member]), tmp_path, "one"), x), probs(member, x),
                               rtol=1e-6, atol=1e-7)


def test_tta_is_the_mean_over_the_eight_views_and_invariant_to_flips_and_turns(tmp_path):
    model = tiny_cnn(1)
    loaded = round_trip(with_tta(model), tmp_path, "tta")
    x = images()
    expected = np.mean([probs(model, v) for v in dihedral(x)], axis=0)
    out = probs(loaded, x)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(probs(model, x) - out).max() > 1e-4  # the model alone is not invariant: TTA really averaged
    for view in dihedral(x)[1:]:
        np.testing.assert_allclose(probs(loaded, view), out, rtol=1e-5, atol=1e-6)


def test_tta_of_an_invariant_model_equals_the_model(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))  # ignores where a pixel is
    invariant = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled), name="pooled")
    x = images()
    np.testing.assert_allclose(probs(round_trip(with_tta(invariant), tmp_path, "inv"), x), probs(invariant, x),
                               rtol=1e-5, atol=1e-6)


def test_tta_of_an_ensemble_is_one_file_that_loads_in_plain_keras(tmp_path):
    """No hematune module is needed to load it: the server and a lab's script load it as any Keras model —
    here in a fresh process on the JAX backend, whatever backend saved it."""
    model = with_tta(build_ensemble([tiny_cnn(0), tiny_cnn(1)]))
    path = tmp_path / "ensemble-tta.keras"
    model.save(path)
    x = images(2)
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, keras, numpy as np\n"
        f"m = keras.saving.load_model({str(path)!r}, compile=False, safe_mode=True)\n"
        f"p = np.asarray(m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))\n"
        f"np.save({str(tmp_path / 'p.npy')!r}, p)\n"
        "mine = [n for n in sys.modules if n.split('.')[0] in ('models', 'data_pipeline', 'search', 'reports')]\n"
        "assert not mine, mine\n"
        "assert keras.backend.backend() == 'jax'\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), probs(model, x), rtol=1e-5, atol=1e-6)


def test_outputs_stay_float32_under_a_bfloat16_policy(tmp_path):
    with precision_policy("mixed_bfloat16"):
        members = [tiny_cnn(seed) for seed in range(2)]
        ensemble = build_ensemble(members)
        tta = with_tta(ensemble)
    for model in (ensemble, tta):
        assert model.output.dtype == "float32"
        out = probs(round_trip(model, tmp_path, model.name), images(2))
        assert out.dtype == np.float32
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-2)


def test_members_that_cannot_be_averaged_are_refused_in_one_line():
    with pytest.raises(ModelConfigError, match="one input size"):
        build_ensemble([tiny_cnn(0), tiny_cnn(1, size=24)])
    with pytest.raises(ModelConfigError, match="one label set"):
        build_ensemble([tiny_cnn(0), tiny_cnn(1, classes=3)])
    with pytest.raises(ModelConfigError, match="no member"):
        build_ensemble([])
    inputs = keras.Input((SIZE, SIZE + 4, 3))
    wide = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs)))
    with pytest.raises(ModelConfigError, match="square") as caught:
        with_tta(wide)
    assert "\n" not in str(caught.value)
