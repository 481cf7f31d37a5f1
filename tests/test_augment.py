"""The augmentation layer: compiled on JAX, random per image and step, identity outside training."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from data_pipeline.augment import CellAugmentation, build_augmentation

ROOT = Path(__file__).resolve().parent.parent


def images(n=8, size=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype("float32")


def dihedral_variants(image):
    turns = [np.rot90(image, k, axes=(0, 1)) for k in range(4)]
    return turns + [t[:, ::-1] for t in turns]


def test_strength_zero_is_the_identity_even_in_training():
    x = images()
    np.testing.assert_array_equal(np.asarray(build_augmentation(0.0)(x, training=True)), x)


@pytest.mark.parametrize("training", [False, None])
def test_identity_outside_training(training):
    x = images()
    np.testing.assert_array_equal(np.asarray(build_augmentation(1.0, seed=3)(x, training=training)), x)


def test_training_changes_images_and_keeps_them_in_range():
    x = images()
    out = np.asarray(build_augmentation(0.5, seed=3)(x, training=True))
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    assert all(not np.allclose(o, i, atol=1.0) for o, i in zip(out, x))


def test_draws_differ_per_image_and_per_step():
    augment = build_augmentation(0.5, seed=1)
    same = np.repeat(images(1), 6, axis=0)
    first, second = np.asarray(augment(same, training=True)), np.asarray(augment(same, training=True))
    for a in range(6):
        for b in range(a + 1, 6):
            assert not np.allclose(first[a], first[b], atol=1.0), f"images {a} and {b} got the same transform"
    assert not np.allclose(first, second, atol=1.0), "two steps drew the same transforms"


def test_same_seed_replays_the_same_draws_and_another_seed_does_not():
    x = images()
    runs = [[np.asarray(layer(x, training=True)) for _ in range(2)]
            for layer in (build_augmentation(0.7, seed=5), build_augmentation(0.7, seed=5), build_augmentation(0.7, seed=6))]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0][0], runs[2][0], atol=1.0)


def test_tiny_strength_is_exactly_one_of_the_eight_dihedral_symmetries():
    """Flips and quarter turns land on pixel centres (no blur), and all 8 occur."""
    x = np.repeat(images(1, size=16), 200, axis=0)
    out = np.asarray(build_augmentation(1e-6, seed=2)(x, training=True))
    variants = dihedral_variants(x[0])
    seen = set()
    for o in out:
        distances = [np.abs(o - v).max() for v in variants]
        assert min(distances) < 0.5, f"not a dihedral symmetry (closest max difference {min(distances):.2f})"
        seen.add(int(np.argmin(distances)))
    assert seen == set(range(8))


def test_computes_in_float32_under_a_mixed_precision_policy():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = build_augmentation(0.5)
        out = layer(images(), training=True)
    finally:
        keras.config.set_dtype_policy(previous)
    assert layer.compute_dtype == "float32" and keras.backend.standardize_dtype(out.dtype) == "float32"


def test_out_of_range_strength_is_refused():
    with pytest.raises(ValueError, match="aug_strength=1.5"):
        build_augmentation(1.5)


def test_config_round_trip_replays_the_same_draws():
    layer = build_augmentation(0.4, seed=9)
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    assert config["registered_name"] == "hematune>CellAugmentation"
    clone = keras.saving.deserialize_keras_object(config)
    assert isinstance(clone, CellAugmentation) and clone.name == "augmentation"
    x = images()
    np.testing.assert_array_equal(np.asarray(layer(x, training=True)), np.asarray(clone(x, training=True)))


JAX_FIT = textwrap.dedent("""
    import json
    import keras
    import numpy as np
    from data_pipeline.augment import CellAugmentation
    from models.registry import build_model

    traced = []  # one entry per Python execution of call() in training mode
    original_call = CellAugmentation.call
    def counting_call(self, images, training=None):
        if training:
            traced.append(1)
        return original_call(self, images, training)
    CellAugmentation.call = counting_call

    built = build_model("cnn", {"blocks": 2, "base_width": 8, "dense_units": 8, "aug_strength": 0.5},
                        num_classes=3, image_size=32, seed=4)
    model = built.model
    model.compile(optimizer="adam", loss="categorical_crossentropy")  # jit_compile="auto"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 32, 32, 3)).astype("uint8")
    y = keras.utils.to_categorical(np.arange(64) % 3, 3)
    layer = model.get_layer("augmentation")
    state_before = np.asarray(layer.generator.state.value).tolist()
    traced.clear()
    model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    state_after = np.asarray(layer.generator.state.value).tolist()
    xf = x[:4].astype("float32")
    print(json.dumps({
        "backend": keras.backend.backend(),
        "jit_compile": model.jit_compile,
        "traced_in_fit": len(traced),
        "state_before": state_before,
        "state_after": state_after,
        "bare_call_identity": bool(np.array_equal(np.asarray(layer(xf)), xf)),
        "training_changes": bool(not np.allclose(np.asarray(layer(xf, training=True)), xf, atol=1.0)),
    }))
""")


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed (pip install jax)")
def test_on_jax_the_model_stays_compiled_and_traces_augmentation_once():
    """Keras' RandomRotation/Zoom/Translation would turn jit_compile off for the whole model on JAX."""
    result = subprocess.run([sys.executable, "-c", JAX_FIT], cwd=ROOT, env={**os.environ, "KERAS_BACKEND": "jax"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax"
    assert report["jit_compile"] is True
    assert report["traced_in_fit"] == 1, "augmentation re-traced during fit: steps would not reuse the compiled function"
    steps = 3 * 64 // 16
    assert report["state_after"][1] - report["state_before"][1] == steps, "the seed did not advance once per step"
    assert report["bare_call_identity"] and report["training_changes"]


def test_preview_writes_a_grid_of_every_strength(make_dataset, tmp_path, capsys):
    from PIL import Image

    from data_pipeline.preview import STRENGTHS
    from search.cli import main

    out = tmp_path / "grid.png"
    assert main(["augment-preview", "--data", str(make_dataset(classes=2)), "--out", str(out), "--size", "16",
                 "--draws", "2"]) == 0
    with Image.open(out) as picture:
        assert picture.format == "PNG" and min(picture.size) > 200
    assert f"{len(STRENGTHS)} strengths × 2 cells × 2 draws" in capsys.readouterr().out


def test_preview_refuses_a_missing_folder_in_one_line(tmp_path, capsys):
    from search.cli import main

    assert main(["augment-preview", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "grid.png")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "does not exist" in error
    assert not (tmp_path / "grid.png").exists()


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="about TensorFlow's XLA")
def test_on_tensorflow_xla_is_left_off_so_fit_works_even_when_asked_for():
    """TensorFlow has no XLA kernel for the affine resampling: claiming XLA support would fail `fit` on a TF GPU."""
    model = keras.Sequential([keras.Input((16, 16, 3)), build_augmentation(0.5), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    model.fit(images(4, size=16), np.zeros((4, 2)), verbose=0)
    assert model.jit_compile is False
