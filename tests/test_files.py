"""The one atomic write (data_pipeline/files.py): the old file or the new one, never half, no leftovers."""
from __future__ import annotations

import pytest

from data_pipeline.files import replacing, write_atomic


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "report.md"
    write_atomic(target, "old")
    write_atomic(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.md"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_the_temporary_name_is_hidden_and_keeps_the_suffix(tmp_path):
    with replacing(tmp_path / "predictions.npz") as tmp:
        assert tmp.name.startswith(".predictions.tmp-") and tmp.suffix == ".npz"
        tmp.write_bytes(b"x")
