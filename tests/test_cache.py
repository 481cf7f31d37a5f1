"""Decode-once cache and the skip-and-report policy for unusable images."""
import numpy as np
import pytest
from PIL import Image

from data_pipeline import cache
from data_pipeline.cache import decode_image, load_or_decode
from data_pipeline.ingest import scan


def test_second_load_decodes_nothing(make_dataset, monkeypatch):
    index = scan(make_dataset())
    first = load_or_decode(index.train, 24)
    assert not first.from_cache and first.pixels.shape == (len(index.train), 24, 24, 3)
    assert first.pixels.dtype == np.uint8 and first.usable.all()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(cache, "decode_image", no_decoding)
    second = load_or_decode(index.train, 24)
    assert second.from_cache and isinstance(second.pixels, np.memmap)
    np.testing.assert_array_equal(np.asarray(first.pixels), np.asarray(second.pixels))


def test_key_depends_on_resolution_and_files(make_dataset):
    index = scan(make_dataset())
    assert cache.cache_key(index.train, 24) != cache.cache_key(index.train, 32)
    path = index.train.files[0]
    before = cache.cache_key(index.train, 24)
    Image.new("RGB", (40, 30), (1, 2, 3)).save(path)
    assert cache.cache_key(scan(path.parent.parent.parent).train, 24) != before


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp", ".jpg"])
def test_any_mode_and_format_becomes_rgb(tmp_path, mode, ext):
    if (ext in (".jpg", ".bmp") and mode in ("RGBA", "I;16")) or (ext == ".jpg" and mode == "P"):
        pytest.skip("format cannot store this mode")
    path = tmp_path / f"img{ext}"
    Image.new(mode, (50, 20), 7).save(path)
    array = decode_image(path, 16)
    assert array.shape == (16, 16, 3) and array.dtype == np.uint8


def _write(path, kind):
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image")
    elif kind == "truncated":
        Image.new("RGB", (64, 64), (90, 10, 10)).save(path, "JPEG")
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "tiny":
        Image.new("RGB", (1, 1), (9, 9, 9)).save(path)
    elif kind == "bomb":
        Image.new("1", (20_000, 20_000)).save(path)  # 400 Mpx, a few KB on disk


@pytest.mark.parametrize("kind, reason", [
    ("zero", "empty file"),
    ("text", "unreadable image"),
    ("truncated", "unreadable image"),
    ("tiny", "too small"),
    ("bomb", "decompression bomb"),
])
def test_unusable_images_are_skipped_and_reported(make_dataset, kind, reason):
    root = make_dataset()
    bad = root / "TRAIN" / "class0" / ("_0_99.jpg" if kind in ("text", "truncated") else "_0_99.png")
    _write(bad, kind)
    index = scan(root)
    decoded = load_or_decode(index.train, 16)
    assert reason in decoded.problems[str(bad)]
    assert decoded.usable.sum() == len(index.train) - 1
    x, y = decoded.usable_arrays()
    assert len(x) == len(y) == len(index.train) - 1
    # the report survives the cache
    assert reason in load_or_decode(index.train, 16).problems[str(bad)]


def test_an_identical_copy_finds_the_decoded_entry_and_names_its_own_files(make_dataset, tmp_path, monkeypatch):
    import shutil

    root = make_dataset()
    (root / "TRAIN" / "class0" / "_0_0.png").write_bytes(b"not an image")
    first = load_or_decode(scan(root).train, 24)
    copy = tmp_path / "restored"
    shutil.copytree(root, copy, copy_function=shutil.copy)  # new modification times, same bytes
    monkeypatch.setattr(cache, "decode_image", lambda *a, **k: pytest.fail("decoded although cached"))
    second = load_or_decode(scan(copy).train, 24)
    assert second.from_cache
    np.testing.assert_array_equal(np.asarray(first.pixels), np.asarray(second.pixels))
    assert list(second.problems) == [str(copy / "TRAIN" / "class0" / "_0_0.png")]
