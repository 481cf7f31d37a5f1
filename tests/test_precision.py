"""PRECISION=: the policy chosen per device, scoped to a trial, recorded, and a saved model that stays float32."""
import keras
import numpy as np
import optuna
import pytest

from search.artifacts import model_path
from search.cli import main
from search.errors import SearchConfigError
from search.precision import precision_policy, resolve_precision
from search.runner import SearchConfig, run_search
from search.workers import joined_config

H100 = "gpu: NVIDIA H100 80GB HBM3 (compute capability 9.0)"
TINY_CNN = {"image_size": 32, "blocks": 2, "base_width": 8, "batch_size": 32, "dense_units": 0, "aug_strength": 0.3}


@pytest.mark.parametrize("device, expected", [
    ("cpu: 2 cores, AMD EPYC", "float32"),
    (H100, "mixed_bfloat16"),
    ("gpu: NVIDIA A100-SXM4-40GB (compute capability 8.0)", "mixed_bfloat16"),
    ("gpu: Tesla T4 (compute capability 7.5)", "mixed_float16"),
    ("gpu: Tesla V100-SXM2-16GB (compute capability 7.0)", "mixed_float16"),
    ("gpu: some accelerator", "mixed_float16"),  # capability unknown: float16 with loss scaling runs everywhere
])
def test_auto_follows_the_device(device, expected):
    assert resolve_precision("auto", device) == expected


@pytest.mark.parametrize("requested", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_an_explicit_precision_is_kept_on_any_device(requested):
    assert resolve_precision(requested, "cpu: 2 cores") == requested
    assert resolve_precision(requested, H100) == requested


@pytest.mark.parametrize("requested", ["fp16", "bfloat16", "", "AUTO"])
def test_unknown_precision_is_one_line_naming_the_setting_and_choices(requested):
    with pytest.raises(SearchConfigError) as error:
        resolve_precision(requested, H100)
    message = str(error.value)
    assert message.startswith(f"PRECISION={requested}:") and "\n" not in message
    assert all(name in message for name in ("auto", "float32", "mixed_bfloat16", "mixed_float16"))


def test_bad_precision_on_the_command_line_is_exit_2_without_traceback(make_dataset, tmp_path, capsys):
    root = make_dataset(classes=2, groups=3, per_group=2)
    code = main(["search", "--data", str(root), "--studies-dir", str(tmp_path / "studies"), "--precision", "fp8"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("hematune: error: PRECISION=fp8: choose one of") and "Traceback" not in err
    assert not (tmp_path / "studies").exists()  # refused before anything was written


def test_policy_is_set_inside_and_restored_after_even_on_error():
    assert keras.config.dtype_policy().name == "float32"
    with precision_policy("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        layer = keras.layers.Dense(2)
        layer.build((None, 3))
        assert layer.compute_dtype == "bfloat16" and layer.variable_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(RuntimeError):
        with precision_policy("mixed_float16"):
            raise RuntimeError("a trial failed")
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(SearchConfigError):
        with precision_policy("auto"):  # must be resolved for a device first
            pass


def test_mixed_float16_trains_with_loss_scaling():
    from models.registry import build_model

    with precision_policy("mixed_float16"):
        model = build_model("cnn", TINY_CNN, num_classes=3, image_size=32, weights="none", seed=0).model
        model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="categorical_crossentropy")
    assert type(model.optimizer).__name__ == "LossScaleOptimizer"  # Keras wraps it for float16 by itself
    assert model.output.dtype == "float32"


def test_mixed_bfloat16_trial_is_recorded_and_its_saved_model_loads_as_float32(make_dataset, tmp_path):
    root = make_dataset(classes=3, groups=4, per_group=3)
    studies = tmp_path / "studies"
    config = SearchConfig(data=str(root), model="cnn", study="bf16", studies_dir=studies, trials=1, max_epochs=1,
                          fixed=TINY_CNN, pruner="none", precision="mixed_bfloat16")
    study = run_search(config).study
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
    assert trial.user_attrs["precision"] == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"  # the search left the process as it found it

    model = keras.saving.load_model(model_path(studies, "bf16", trial.number), safe_mode=True)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.dtype_policy.name == "mixed_bfloat16" for layer in convs)  # it did train in bf16
    probabilities = np.asarray(model.predict(np.zeros((2, 32, 32, 3), dtype="float32"), verbose=0))
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)

    # a worker joining the study trains in the study's precision unless told otherwise
    storage = f"sqlite:///{studies / 'hematune.db'}"
    assert study.user_attrs["worker_settings"]["precision"] == "mixed_bfloat16"
    joined, _ = joined_config("bf16", storage, studies, None, 2, None)
    assert joined.precision == "mixed_bfloat16"
    joined, _ = joined_config("bf16", storage, studies, None, 2, None, precision="float32")
    assert joined.precision == "float32"
