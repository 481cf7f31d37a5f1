"""Layouts, class discovery and the refusals of `data_pipeline.ingest`."""
import shutil

import pytest

from data_pipeline import DataError
from data_pipeline.ingest import fingerprint, scan


def test_train_test_layout(make_dataset):
    root = make_dataset(classes=3, groups=4, per_group=3)
    index = scan(root)
    assert index.layout == "train_test"
    assert index.classes == ("class0", "class1", "class2")
    assert len(index.train) == 3 * 4 * 3
    assert len(index.test) == 3 * 2 * 3
    assert set(index.train.labels) == {0, 1, 2}


def test_flat_layout_any_number_of_classes(make_dataset):
    root = make_dataset(classes=8, layout="flat", groups=3, per_group=2)
    index = scan(root)
    assert index.layout == "flat" and len(index.classes) == 8 and index.test is None


def test_read_test_false_lists_no_test_image(make_dataset):
    root = make_dataset()
    assert scan(root, read_test=False).test is None


def test_non_image_files_are_skipped_and_reported(make_dataset):
    root = make_dataset()
    (root / "TRAIN" / "class0" / "notes.txt").write_text("hello")
    index = scan(root)
    assert len(index.skipped) == 1 and "notes.txt" in index.skipped[0]
    assert all(p.suffix == ".png" for p in index.train.files)


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"),
    ("single_class", "at least 2 class folders"),
    ("empty_class", "class folder has no images"),
    ("missing_test_class", "missing in TEST: class2"),
    ("extra_test_class", "not in TRAIN: class9"),
    ("no_train", "no TRAIN/ folder"),
    ("no_test", "no TEST/ folder"),
    ("is_file", "not a folder"),
])
def test_bad_layouts_get_one_line_errors(make_dataset, tmp_path, case, expected):
    root = make_dataset()
    if case == "missing":
        root = tmp_path / "nope"
    elif case == "single_class":
        root = make_dataset(classes=1, layout="flat", name="one")
    elif case == "empty_class":
        for f in (root / "TRAIN" / "class1").iterdir():
            f.unlink()
    elif case == "missing_test_class":
        shutil.rmtree(root / "TEST" / "class2")
    elif case == "extra_test_class":
        (root / "TEST" / "class9").mkdir()
    elif case == "no_train":
        shutil.rmtree(root / "TRAIN")
    elif case == "no_test":
        shutil.rmtree(root / "TEST")
    elif case == "is_file":
        root = tmp_path / "file.txt"
        root.write_text("x")
    with pytest.raises(DataError) as info:
        scan(root)
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_fingerprint_changes_with_content_metadata(make_dataset):
    root = make_dataset()
    index = scan(root)
    before = fingerprint(index.train, root)
    assert fingerprint(scan(root).train, root) == before
    victim = index.train.files[0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert fingerprint(scan(root).train, root) != before


# --- content fingerprint: an identical copy keeps it, any changed byte changes it -------------------------

def _copy_without_times(source, target):
    """A copy as a restore or a new server makes it: same bytes, new modification times."""
    import shutil

    shutil.copytree(source, target, copy_function=shutil.copy)
    return target


def test_an_identical_copy_of_the_data_keeps_its_fingerprint(make_dataset, tmp_path):
    root = make_dataset()
    copy = _copy_without_times(root, tmp_path / "restored")
    assert scan(copy).train.files[0].stat().st_mtime_ns != scan(root).train.files[0].stat().st_mtime_ns
    assert fingerprint(scan(copy).train, copy) == fingerprint(scan(root).train, root)


def test_changed_content_with_the_old_size_and_time_changes_the_fingerprint(make_dataset):
    import os

    root = make_dataset()
    before = fingerprint(scan(root).train, root)  # memoises every file's hash
    victim = scan(root).train.files[0]
    stat = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `cp -p` or a careless edit tool would
    assert victim.stat().st_size == stat.st_size and victim.stat().st_mtime_ns == stat.st_mtime_ns
    assert fingerprint(scan(root).train, root) != before


def test_a_rerun_reads_no_file_it_has_hashed(make_dataset, monkeypatch):
    from data_pipeline import cache

    root = make_dataset()
    files = scan(root).train.files
    fingerprint(scan(root).train, root)
    hashed = []
    real_sha256 = cache._sha256
    monkeypatch.setattr(cache, "_sha256", lambda path: hashed.append(path) or real_sha256(path))
    monkeypatch.setattr(cache, "_MEMOS", {})  # a new process: the memo comes from disk
    fingerprint(scan(root).train, root)
    assert hashed == []
    files[1].write_bytes(files[1].read_bytes() + b"\0")
    fingerprint(scan(root).train, root)
    assert hashed == [str(files[1])]


def test_a_study_made_before_content_fingerprints(make_dataset, tmp_path):
    """Older studies recorded a file-time fingerprint: accepted on their untouched files, refused on a copy
    with a line that says how to proceed."""
    from data_pipeline.ingest import fingerprint_change, time_fingerprint

    root = make_dataset()
    index = scan(root)
    old = time_fingerprint(index.train, root)
    assert fingerprint_change(old, None, index.train, root, fingerprint(index.train, root)) is None
    copy = _copy_without_times(root, tmp_path / "restored")
    moved = scan(copy)
    why = fingerprint_change(old, None, moved.train, copy, fingerprint(moved.train, copy))
    assert why.startswith(f"its fingerprint {old} was made by an older hematune from file modification times")
    assert "cp -p" in why and "\n" not in why
