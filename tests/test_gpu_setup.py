"""GPU discovery without a GPU: a fake ``nvidia-smi`` on PATH and a fake CUDA plugin for JAX on sys.path.

What is checked is hematune's own decisions — which backend, which GPUs a
process may use, which GPU each worker gets, what ``make install`` installs,
what the search's first lines say — not CUDA itself.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from search import environment
from search.workers import gpu_pinning

REPO = Path(__file__).resolve().parent.parent
H100 = "NVIDIA H100 80GB HBM3"
SMI_LIST = f"GPU 0: {H100} (UUID: GPU-11111111-aaaa)\nGPU 1: {H100} (UUID: GPU-22222222-bbbb)\n"


def _script(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return folder


@pytest.fixture
def two_gpus(tmp_path, monkeypatch):
    """An ``nvidia-smi`` that lists two H100s, first on PATH."""
    folder = _script(tmp_path / "bin", "nvidia-smi", f"printf '{SMI_LIST}'\n")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    for name in ("CUDA_VISIBLE_DEVICES", "HEMATUNE_GPU", "KERAS_BACKEND", "JAX_PLATFORMS"):
        monkeypatch.delenv(name, raising=False)
    return folder


@pytest.fixture
def cuda_plugin(tmp_path, monkeypatch):
    """An importable ``jax_cuda12_plugin`` (what ``pip install jax[cuda12]`` adds); nothing imports it."""
    folder = tmp_path / "site"
    (folder / "jax_cuda12_plugin").mkdir(parents=True)
    (folder / "jax_cuda12_plugin" / "__init__.py").write_text("raise ImportError('only its presence is checked')\n")
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_nvidia_smi_list_is_read_and_cuda_visible_devices_honoured(two_gpus, monkeypatch):
    assert environment.nvidia_gpus() == [("0", H100, "GPU-11111111-aaaa"), ("1", H100, "GPU-22222222-bbbb")]
    assert environment.visible_gpus() == [("0", H100), ("1", H100)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert environment.visible_gpus() == [("1", H100)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-22222222-bbbb,0")
    assert environment.visible_gpus() == [("GPU-22222222-bbbb", H100), ("0", H100)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert environment.visible_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("HEMATUNE_GPU", "0")
    assert environment.visible_gpus() == []


def test_no_gpu_when_nvidia_smi_is_missing_or_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert environment.nvidia_gpus() == []
    failing = _script(tmp_path / "broken", "nvidia-smi",
                      "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\"\nexit 9\n")
    monkeypatch.setenv("PATH", str(failing))
    assert environment.nvidia_gpus() == []


@pytest.mark.skipif(environment.cuda_jax_installed(), reason="a real CUDA plugin for JAX is installed here")
def test_a_gpu_without_a_cuda_backend_keeps_the_default(two_gpus):
    environment.select_backend()
    assert "KERAS_BACKEND" not in os.environ


def test_jax_is_chosen_with_its_cuda_plugin_and_a_gpu_unless_a_backend_is_set(two_gpus, cuda_plugin, monkeypatch):
    environment.select_backend()
    assert os.environ["KERAS_BACKEND"] == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")  # the user's choice wins
    environment.select_backend()
    assert os.environ["KERAS_BACKEND"] == "tensorflow"


def test_gpu_0_hides_every_gpu_and_keeps_the_default_backend(two_gpus, cuda_plugin, monkeypatch):
    monkeypatch.setenv("HEMATUNE_GPU", "0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    environment.select_backend()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and os.environ["JAX_PLATFORMS"] == "cpu"
    assert "KERAS_BACKEND" not in os.environ


def test_cli_import_picks_jax_without_importing_it(two_gpus, cuda_plugin):
    """What ``hematune --help`` does: the backend is chosen by cheap checks, no backend is imported."""
    env = {**os.environ, "PYTHONPATH": f"{cuda_plugin}{os.pathsep}{REPO}"}
    out = subprocess.run([sys.executable, "-c", "import os, sys, search.cli; print(os.environ.get('KERAS_BACKEND'), "
                          "*(name in sys.modules for name in ('jax', 'keras', 'tensorflow')))"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["jax", "False", "False", "False"]


def test_warning_names_what_to_do_when_the_gpu_goes_unused(two_gpus, monkeypatch):
    import keras

    cpu = "cpu: 2 cores, AMD EPYC"
    warning = environment.gpu_unused_warning(cpu)
    assert warning.startswith(f"nvidia-smi sees 2 GPU(s) ({H100}) but the {keras.backend.backend()} backend "
                              "trains on the CPU")
    assert "make install" in warning and "GPU=0" in warning
    assert environment.gpu_unused_warning(f"gpu: {H100} (compute capability 9.0)") is None
    monkeypatch.setenv("HEMATUNE_GPU", "0")
    assert environment.gpu_unused_warning(cpu) is None


def test_no_warning_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert environment.gpu_unused_warning("cpu: 2 cores") is None


def test_first_lines_of_a_search_name_device_and_precision_and_warn(two_gpus, tmp_path):
    """A real ``hematune search`` on a machine whose GPU the installed backend cannot use."""
    env = {**os.environ, "HEMATUNE_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "search", "search", "--data", str(tmp_path / "no-such-folder"),
                          "--studies-dir", str(tmp_path / "studies")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("device cpu: ") and lines[0].endswith("· precision float32 (PRECISION=auto)"), lines
    assert lines[1].startswith("warning: nvidia-smi sees 2 GPU(s)") and "make install" in lines[1], lines
    errors = [line for line in out.stderr.splitlines() if line.startswith("hematune")]  # TensorFlow's C++ log aside
    assert out.returncode == 2 and len(errors) == 1 and "no-such-folder" in errors[0]  # then the bad DATA, one line


def test_each_worker_gets_its_own_gpu():
    gpus = [("0", H100), ("1", H100)]
    pins, lines = gpu_pinning(2, gpus)
    assert pins == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    assert lines == [f"GPUs: worker 1 → GPU 0, worker 2 → GPU 1 ({H100})"]
    pins, _ = gpu_pinning(2, [("GPU-22222222-bbbb", H100), ("3", H100)])  # the user's CUDA_VISIBLE_DEVICES
    assert [pin["CUDA_VISIBLE_DEVICES"] for pin in pins] == ["GPU-22222222-bbbb", "3"]


def test_more_workers_than_gpus_share_with_a_warning():
    pins, lines = gpu_pinning(3, [("0", H100), ("1", H100)])
    assert [pin["CUDA_VISIBLE_DEVICES"] for pin in pins] == ["0", "1", "0"]
    assert all(pin["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" for pin in pins)
    assert lines[1].startswith("warning: WORKERS=3 is more than the 2 GPU(s) here") and "WORKERS=2" in lines[1]


def test_workers_are_left_alone_without_a_gpu():
    assert gpu_pinning(3, []) == ([{}, {}, {}], [])


def test_worker_pinning_from_the_fake_nvidia_smi(two_gpus):
    pins, _ = gpu_pinning(4, environment.visible_gpus())
    assert [pin["CUDA_VISIBLE_DEVICES"] for pin in pins] == ["0", "1", "0", "1"]


def _install_command(env: dict, *args: str) -> str:
    out = subprocess.run(["make", "-n", "-B", "install", *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    (line,) = [line for line in out.stdout.splitlines() if "pip install --quiet -e" in line]
    return line


@pytest.mark.skipif(subprocess.run(["which", "make"], capture_output=True).returncode != 0, reason="no make")
def test_make_install_adds_the_cuda_backend_only_where_nvidia_smi_sees_a_gpu(two_gpus, tmp_path):
    with_gpu = {**os.environ}
    assert _install_command(with_gpu).endswith("-e '.[dev,postgres,gpu]'")
    assert _install_command(with_gpu, "GPU=0").endswith("-e '.[dev,postgres]'")
    no_smi = {**os.environ, "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                                   if not (Path(p) / "nvidia-smi").exists())}
    assert _install_command(no_smi).endswith("-e '.[dev,postgres]'")  # CPU machines: today's install exactly
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'gpu = ["jax[cuda12]' in pyproject
