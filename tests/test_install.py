"""A non-editable install (``pip install .``, as a user or a Docker image does it) works outside the checkout.

The wheel is built from a copy of exactly what pyproject.toml packages and
installed, without dependencies, into a fresh virtual environment that reaches
the project environment's packages through a ``.pth`` line (nothing is
downloaded). A one-trial search then runs from a folder outside the
repository, with the default search space: the spaces must have been shipped.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.worker_tools import REPO, tiny_dataset

pytestmark = pytest.mark.integration
tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")


def _run(args: list, **kwargs) -> str:
    """Run a build or install step; on failure, show what it printed."""
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)
    assert out.returncode == 0, f"{' '.join(map(str, args))}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
    return out.stdout


def _package_sources(target: Path) -> Path:
    """Copy pyproject.toml, README.md and every package folder it names (with package-dir) to ``target``."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = config.get("package-dir", {})
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, target / name)
    for package in config["packages"]:
        folder = mapped.get(package, package.replace(".", "/"))
        if not (target / folder).exists():
            shutil.copytree(REPO / folder, target / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_a_wheel_install_runs_a_search_outside_the_repository(tmp_path):
    source = _package_sources(tmp_path / "source")
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", wheels,
          source])
    [wheel] = wheels.glob("hematune-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (site / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel])

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HEMATUNE_CACHE"] = str(tmp_path / "cache")
    where = _run([python, "-c", "import search.space as s; print(s.__file__); print(s.SPACES_DIR)"], cwd=outside,
                 env=env).split()
    assert all(Path(p).is_relative_to(site) for p in where), where  # the installed copy, not the checkout

    data = tiny_dataset(tmp_path / "cells")
    out = subprocess.run([str(venv / "bin" / "hematune"), "search", "--data", str(data), "--studies-dir", "studies",
                          "--trials", "1", "--max-epochs", "1", "--fix", "image_size=32", "--fix", "blocks=2",
                          "--pruner", "none"], cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"space {site / 'search' / 'spaces'}" in out.stdout  # the shipped file of the device's profile
    assert (outside / "studies" / "hematune.db").is_file()
