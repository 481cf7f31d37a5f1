"""A new user's first screen is hematune's: TensorFlow's C++ start-up lines are kept off, real errors are not."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from search.environment import TF_START_UP_NOISE, _stderr_filtered
from tests.worker_tools import TINY, tiny_dataset

# what TensorFlow 2.18+ prints while it loads, before any log level is read (two of each)
START_UP_LINES = ("All log messages before absl::InitializeLog() is called", "oneDNN custom operations are on")


def test_a_real_search_shows_no_tensorflow_start_up_lines(tmp_path):
    data = tiny_dataset(tmp_path / "cells")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TF_", "ABSL_"))}  # a new user's
    env["HEMATUNE_CACHE"] = str(tmp_path / "cache")
    hematune = Path(sys.executable).parent / "hematune"
    out = subprocess.run([str(hematune), "search", "--data", str(data), "--studies-dir", str(tmp_path / "studies"),
                          "--trials", "1", "--max-epochs", "1", *TINY], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for line in START_UP_LINES:
        assert line not in out.stdout and line not in out.stderr
    assert out.stderr.strip() == ""  # nothing else from TensorFlow either
    assert out.stdout.startswith("device ")  # the first line is hematune's


def test_the_filter_drops_only_the_start_up_lines(capfd):
    with _stderr_filtered(TF_START_UP_NOISE):
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see slightly different...\n")
        os.write(2, b"E0000 real_error.cc:1] could not load libcuda.so\n")  # C++ side, below Python
        print("a Python warning", file=sys.stderr)
    kept = capfd.readouterr().err.splitlines()  # (pytest routes Python's stderr apart from fd 2: order may differ)
    assert sorted(kept) == ["E0000 real_error.cc:1] could not load libcuda.so", "a Python warning"]


def test_the_filter_lets_the_error_of_a_failed_import_through(capfd):
    try:
        with _stderr_filtered(TF_START_UP_NOISE):
            os.write(2, b"F0000 fatal.cc:1] Check failed\n")
            raise ImportError("libtensorflow_framework.so.2: cannot open shared object file")
    except ImportError:
        pass
    assert capfd.readouterr().err == "F0000 fatal.cc:1] Check failed\n"
