"""Where a trial ran: backend, device, package versions.

This is the one module allowed to touch a backend's own API (``tensorflow``,
``jax``, ``torch``) — only to *describe* the device, never to compute.
"""
from __future__ import annotations

import importlib
import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("hematune", "keras", "tensorflow-cpu", "tensorflow", "jax", "jaxlib", "torch", "optuna", "numpy",
            "pillow", "scikit-learn")


def quiet_backend_logs() -> None:
    """Keep TensorFlow's C++ start-up chatter off the terminal (must run before keras is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


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
    """e.g. ``gpu: NVIDIA H100 80GB HBM3`` or ``cpu: 2 cores, Intel Xeon …``."""
    import keras

    backend = keras.backend.backend()
    accelerator = None
    if backend == "jax":
        jax = importlib.import_module("jax")
        devices = [d for d in jax.devices() if d.platform != "cpu"]
        accelerator = devices[0].device_kind if devices else None
    elif backend == "tensorflow":  # --- TensorFlow adapter: description only ---
        tf = importlib.import_module("tensorflow")
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            accelerator = details.get("device_name", gpus[0].name)
    elif backend == "torch":
        torch = importlib.import_module("torch")
        accelerator = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if accelerator:
        return f"gpu: {accelerator}"
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
