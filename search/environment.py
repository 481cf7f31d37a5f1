"""Where a trial runs: which backend and device, package versions.

This is the one module allowed to touch a backend's own API (``tensorflow``,
``jax``, ``torch``) — the marked adapter. It describes the device and sets
the backend up, never computes.

GPU choice, before Keras is imported (``select_backend``, called by the CLI):
with KERAS_BACKEND unset, an installed CUDA plugin for JAX (``make install``
adds it where ``nvidia-smi`` works) and a GPU ``nvidia-smi`` lists, hematune
trains on JAX, on the GPU. ``HEMATUNE_GPU=0`` (``make … GPU=0``) hides every
GPU instead. Only cheap checks run there (``importlib.util.find_spec``,
``nvidia-smi -L``): ``hematune --help`` imports no backend.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("hematune", "keras", "tensorflow-cpu", "tensorflow", "jax", "jaxlib", "torch", "optuna", "numpy",
            "pillow", "scikit-learn")


# What TensorFlow's C++ side prints while it loads, before its log level is read (so TF_CPP_MIN_LOG_LEVEL cannot
# stop it): absl's "before InitializeLog" notice, the oneDNN note and CPU/CUDA start-up lines, each twice
TF_START_UP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called|oneDNN custom operations are on|"
    r"cpu_feature_guard|This TensorFlow binary is optimized|To enable the following instructions|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered|TF-TRT Warning")


def quiet_backend_logs() -> None:
    """Keep TensorFlow's start-up chatter off the terminal, so a user's first screen is hematune's.

    Must run before anything imports TensorFlow (Keras does, on its default backend). The log-level
    variables quiet TensorFlow once it runs; the lines its C++ libraries print while they load are kept
    off by importing ``tensorflow`` with file descriptor 2 routed through a filter (:func:`_stderr_filtered`)
    that drops only those lines: a real error or warning of the import still reaches stderr. The hook
    acts on the first ``import tensorflow`` of the process, wherever it happens, and imports nothing itself
    (``hematune --help`` stays fast).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as Python would, and runs its import inside :func:`_stderr_filtered`."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the rest of the search, and TensorFlow's submodules, are Python's own
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def exec_module(module):
                with _stderr_filtered(TF_START_UP_NOISE):
                    load(module)

            spec.loader.exec_module = exec_module
        return spec


@contextmanager
def _stderr_filtered(noise: re.Pattern):
    """Route file descriptor 2 (where C++ writes, below Python) to a temporary file; afterwards, even when
    the block raised, write back every line that ``noise`` does not match."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not noise.search(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


GPU_SETTING = "HEMATUNE_GPU"  # make … GPU=0
CUDA_JAX_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")  # what jax[cuda12] / jax[cuda13] install
_NVIDIA_GPU_LINE = re.compile(r"^GPU (\d+): (.+?)(?: \(UUID: ([^)]+)\))?$", re.MULTILINE)


def gpu_disabled() -> bool:
    return os.environ.get(GPU_SETTING, "").strip().lower() in ("0", "no", "false", "off")


def nvidia_gpus() -> list[tuple[str, str, str]]:
    """(index, name, uuid) of every GPU ``nvidia-smi -L`` lists; [] without a driver. Imports no backend."""
    executable = shutil.which("nvidia-smi")
    if not executable:
        return []
    try:
        out = subprocess.run([executable, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [(m.group(1), m.group(2).strip(), m.group(3) or "") for m in _NVIDIA_GPU_LINE.finditer(out.stdout)]


def visible_gpus() -> list[tuple[str, str]]:
    """(CUDA_VISIBLE_DEVICES entry, name) of the GPUs this process may use: none with GPU=0, and
    only those CUDA_VISIBLE_DEVICES names (by index or UUID) when it is set."""
    if gpu_disabled():
        return []
    gpus = nvidia_gpus()
    chosen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if chosen is None:
        return [(index, name) for index, name, _ in gpus]
    by_id = {key: name for index, name, uuid in gpus for key in (index, uuid) if key}
    return [(entry, by_id.get(entry, "GPU")) for entry in (e.strip() for e in chosen.split(",")) if entry
            and entry in by_id]


def cuda_jax_installed() -> bool:
    return any(importlib.util.find_spec(name) is not None for name in CUDA_JAX_PLUGINS)


def select_backend() -> None:
    """Choose the device before Keras is imported (it reads KERAS_BACKEND once).

    GPU=0: hide every GPU from every backend and keep the default backend.
    Otherwise, when the user did not choose a backend, JAX with its CUDA
    plugin is used wherever a GPU is visible; the default backend on x86-64
    (tensorflow-cpu) cannot use one.
    """
    if gpu_disabled():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ["JAX_PLATFORMS"] = "cpu"
        return
    if "KERAS_BACKEND" not in os.environ and cuda_jax_installed() and visible_gpus():
        os.environ["KERAS_BACKEND"] = "jax"


def gpu_unused_warning(device: str) -> str | None:
    """What to do when ``nvidia-smi`` sees a GPU but Keras trains on ``device`` = "cpu: …"; else None."""
    if device.startswith("gpu:") or gpu_disabled():
        return None
    gpus = visible_gpus()
    if not gpus:
        return None
    import keras

    backend = keras.backend.backend()
    seen = f"nvidia-smi sees {len(gpus)} GPU(s) ({gpus[0][1]}) but the {backend} backend trains on the CPU"
    if backend == "jax" and cuda_jax_installed():
        fix = ("JAX's CUDA plugin found no usable GPU: check the driver (python -c 'import jax; print(jax.devices())')"
               + (f", and unset JAX_PLATFORMS={os.environ['JAX_PLATFORMS']}" if "JAX_PLATFORMS" in os.environ else ""))
    elif not cuda_jax_installed():
        fix = "run `make install` on this machine (it adds jax[cuda12], which hematune then uses by itself)"
        if "KERAS_BACKEND" in os.environ and backend != "jax":
            fix += f" and unset KERAS_BACKEND={backend}"
    else:
        fix = f"unset KERAS_BACKEND={backend} (hematune then trains on JAX with its installed CUDA plugin)"
    return f"{seen}: {fix}; GPU=0 trains on the CPU without this warning"


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def device_description() -> str:
    """e.g. ``gpu: NVIDIA H100 80GB HBM3 (compute capability 9.0)`` or ``cpu: 2 cores, Intel Xeon …``.

    The compute capability decides PRECISION=auto (search/precision.py).
    """
    import keras

    backend = keras.backend.backend()
    accelerator, capability = None, None
    if backend == "jax":
        jax = importlib.import_module("jax")
        devices = [d for d in jax.devices() if d.platform != "cpu"]
        if devices:
            accelerator = devices[0].device_kind
            capability = getattr(devices[0], "compute_capability", None)
    elif backend == "tensorflow":  # --- TensorFlow adapter: description only ---
        tf = importlib.import_module("tensorflow")
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            accelerator = details.get("device_name", gpus[0].name)
            capability = ".".join(map(str, details["compute_capability"])) if "compute_capability" in details else None
    elif backend == "torch":
        torch = importlib.import_module("torch")
        if torch.cuda.is_available():
            accelerator = torch.cuda.get_device_name(0)
            capability = ".".join(map(str, torch.cuda.get_device_capability(0)))
    if accelerator:
        return f"gpu: {accelerator}" + (f" (compute capability {capability})" if capability else "")
    return f"cpu: {os.cpu_count()} cores, {_cpu_name()}"


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The hematune checkout's commit, for reproducibility blocks (None outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
