"""The bad-input catalogue: what each bad input gets, through the CLI a user runs.

Every refused input ends as exactly one line on stderr, ``hematune: error:
…``, a non-zero exit and no traceback — and nothing stored changes: the
studies in the storage (trials, states, values, params), the files beside
them and the releases are compared before and after every case. Unusable
image files are the exception by design: they are skipped, reported in one
line and recorded on the study (``skipped_images``), and the search goes on.
The README's "Bad inputs" table lists the same cases.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
from PIL import Image

from search.cli import main
from tests.conftest import make_class_folder, synthetic_image
from tests.worker_tools import REPO, tiny_dataset

TINY = ["--model", "cnn", "--fix", "image_size=32", "--fix", "blocks=2", "--pruner", "none", "--max-epochs", "1"]


@dataclass
class World:
    root: Path  # scratch folder for the cases' own inputs
    data: Path  # a good TRAIN/TEST data set
    studies: Path  # holds study "base" (one completed trial with a model file)
    releases: Path  # holds releases/base/v1, promoted from "base"

    @property
    def storage(self) -> str:
        return f"sqlite:///{self.studies / 'hematune.db'}"

    def search(self, *extra: str, data: Path | None = None) -> list[str]:
        return ["search", "--data", str(data or self.data), "--studies-dir", str(self.studies), "--trials", "1",
                *TINY, *extra]

    def search_model(self, model: str, *extra: str) -> list[str]:
        """A search of another family, without TINY's CNN settings."""
        return ["search", "--data", str(self.data), "--studies-dir", str(self.studies), "--trials", "1",
                "--model", model, "--max-epochs", "1", *extra]

    def dataset(self, name: str, **kwargs) -> Path:
        return tiny_dataset(self.root / name, **kwargs)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("bad-inputs")
    w = World(root, tiny_dataset(root / "cells"), root / "studies", root / "releases")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HEMATUNE_CACHE", str(root / "cache"))
        assert main(w.search("--study", "base")) == 0
        assert main(["promote", "--study", "base", "--studies-dir", str(w.studies), "--releases-dir",
                     str(w.releases), "--reports-dir", str(root / "reports")]) == 0
    return w


def snapshot(w: World) -> dict:
    """Everything stored: each study's trials, and every file under studies/ and releases/."""
    storage = optuna.storages.RDBStorage(w.storage)  # not open_storage: a case may set bad HEMATUNE_* values
    studies = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        studies[summary.study_name] = (study.user_attrs, [(t.number, t.state, t.values, t.params, t.user_attrs)
                                                          for t in study.get_trials(deepcopy=False)])
    files = {}
    for folder in (w.studies, w.releases):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith("hematune.db"):  # the database: compared above
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"studies": studies, "files": files}


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header claims ``width``×``height`` pixels: a decompression bomb's calling card."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# --- refused inputs: one line, exit 2, nothing stored changes ------------------------------------------

@dataclass
class Refusal:
    name: str
    argv: Callable[[World], list[str]]
    says: str  # a regular expression the error line must match
    env: dict = field(default_factory=dict)
    code: int = 2


def _empty_class(w: World) -> Path:
    root = w.dataset("empty-class")
    for image in (root / "TRAIN" / "class2").iterdir():
        image.unlink()
    return root


def _single_class(w: World) -> Path:
    root = w.root / "single-class"
    make_class_folder(root / "TRAIN" / "class0", 0, 4, 3)
    make_class_folder(root / "TEST" / "class0", 0, 2, 3)
    return root


def _test_classes_differ(w: World) -> Path:
    root = w.dataset("classes-differ")
    (root / "TEST" / "class2").rename(root / "TEST" / "class9")
    return root


def _text_files_only(w: World) -> Path:
    root = w.root / "no-images"
    for part in ("TRAIN", "TEST"):
        for cls in ("a", "b"):
            (root / part / cls).mkdir(parents=True)
            (root / part / cls / "notes.txt").write_text("not an image")
    return root


def _a_file(w: World) -> Path:
    path = w.root / "data.txt"
    path.write_text("a file, not a folder")
    return path


def _release_copy(w: World, name: str, spoil) -> Path:
    """A copy of the base release, spoiled once by ``spoil(folder)``."""
    copy = w.root / name / "v1"
    if not copy.exists():
        shutil.copytree(w.releases / "base" / "v1", copy)
        spoil(copy)
    return copy


def _tampered_release(w: World) -> Path:
    def add_a_space(folder: Path) -> None:
        with open(folder / "metrics.json", "a") as f:
            f.write(" ")
    return _release_copy(w, "tampered", add_a_space)


def _extra_file_release(w: World) -> Path:
    return _release_copy(w, "extra-file", lambda folder: (folder / "payload.py").write_text("print('hi')"))


def _truncated_model_release(w: World) -> Path:
    copy = w.root / "truncated" / "v1"
    if not copy.exists():
        shutil.copytree(w.releases / "base" / "v1", copy)
        model = copy / "model.keras"
        model.write_bytes(model.read_bytes()[:1000])
    return copy


REFUSALS = [
    Refusal("data-does-not-exist", lambda w: w.search(data=w.root / "nowhere"), r"DATA=.*does not exist"),
    Refusal("data-is-a-file", lambda w: w.search(data=_a_file(w)), r"not a folder"),
    Refusal("empty-class-folder", lambda w: w.search(data=_empty_class(w)), r"class2: class folder has no images"),
    Refusal("single-class", lambda w: w.search(data=_single_class(w)), r"at least 2 class folders"),
    Refusal("train-test-classes-differ", lambda w: w.search(data=_test_classes_differ(w)),
            r"differ from TRAIN \(missing in TEST: class2; not in TRAIN: class9\)"),
    Refusal("no-image-files", lambda w: w.search(data=_text_files_only(w)), r"has no images"),
    Refusal("unknown-model", lambda w: [*w.search(), "--model", "transformer"], r"MODEL=transformer: unknown model"),
    Refusal("malformed-storage-url", lambda w: [*w.search(), "--storage", "not a url"], r"not a database URL"),
    Refusal("unknown-storage-scheme", lambda w: [*w.search(), "--storage", "http://example.org/db"],
            r"STORAGE=http://example.org/db: cannot open the study database"),
    Refusal("unreachable-postgresql", lambda w: [*w.search(), "--storage", "postgresql://u:secret@127.0.0.1:9/db"],
            r"STORAGE=postgresql://u:\*\*\*@127.0.0.1:9/db: cannot open the study database .*(refused|connect)"),
    Refusal("in-memory-storage", lambda w: [*w.search(), "--storage", "sqlite:///:memory:"], r"needs a file"),
    Refusal("trials-zero", lambda w: [*w.search(), "--trials", "0"], r"TRIALS=0: must be a positive number"),
    Refusal("trials-negative", lambda w: [*w.search(), "--trials", "-3"], r"TRIALS=-3: must be a positive"),
    Refusal("timeout-zero", lambda w: [*w.search(), "--timeout", "0"], r"TIMEOUT=0.0: must be a positive"),
    Refusal("timeout-negative", lambda w: [*w.search(), "--timeout", "-60"], r"TIMEOUT=-60.0: must be a positive"),
    Refusal("max-epochs-zero", lambda w: [*w.search(), "--max-epochs", "0"], r"MAX_EPOCHS=0: must be a positive"),
    Refusal("max-epochs-negative", lambda w: [*w.search(), "--max-epochs", "-1"], r"MAX_EPOCHS=-1: must be a positive"),
    Refusal("workers-zero", lambda w: [*w.search(), "--workers", "0"], r"WORKERS=0: must be a positive"),
    Refusal("image-size-too-small-for-backbone",
            lambda w: w.search_model("mobilenet", "--fix", "image_size=16", "--weights", "none"),
            r"image_size.*16.*too small for mobilenet.*at least 32"),
    Refusal("image-size-too-small-for-cnn", lambda w: [*w.search(), "--fix", "image_size=4"],
            r"image_size.*4.*too small for cnn.*at least 8"),
    Refusal("study-name-with-parent-dir", lambda w: [*w.search(), "--study", "../escape"], r"STUDY=\.\./escape: use"),
    Refusal("study-name-with-slash", lambda w: [*w.search(), "--study", "a/b"], r"STUDY=a/b: use letters"),
    Refusal("existing-study-other-space", lambda w: [*w.search("--study", "base"), "--fix", "blocks=3"],
            r"STUDY=base: was created with a different search space"),
    Refusal("existing-study-other-data", lambda w: w.search("--study", "base", data=w.dataset("other", per_group=4)),
            r"STUDY=base: was created on other data"),
    Refusal("weights-file-missing", lambda w: w.search_model("mobilenet", "--fix", "image_size=32",
                                                             "--weights", str(w.root / "missing.h5")),
            r"WEIGHTS=.*missing.h5: file does not exist"),
    Refusal("unknown-fix-parameter", lambda w: [*w.search(), "--fix", "depth=3"], r"cnn has no parameter 'depth'"),
    Refusal("space-file-missing", lambda w: [*w.search(), "--space", str(w.root / "nope.yaml")],
            r"SPACE=.*nope.yaml: search-space file does not exist"),
    Refusal("groups-bad-regex", lambda w: [*w.search(), "--groups", "filename:(["], r"invalid regular expression"),
    Refusal("val-fraction-out-of-range", lambda w: [*w.search(), "--val-fraction", "0.9"], r"VAL_FRACTION=0.9"),
    Refusal("grace-period-not-a-number", lambda w: w.search(), r"HEMATUNE_GRACE_S=soon: must be a whole number",
            env={"HEMATUNE_GRACE_S": "soon"}),
    Refusal("worker-unknown-study", lambda w: ["worker", "--study", "nobody", "--studies-dir", str(w.studies)],
            r"STUDY=nobody: no such study"),
    Refusal("worker-without-study", lambda w: ["worker", "--studies-dir", str(w.studies)], r"STUDY= is required"),
    Refusal("releases-dir-missing", lambda w: ["verify", str(w.root / "no-releases" / "base")],
            r"no such release folder"),
    Refusal("tampered-release", lambda w: ["verify", str(_tampered_release(w))],
            r"metrics.json: checksum mismatch"),
    Refusal("release-with-extra-file", lambda w: ["verify", str(_extra_file_release(w))],
            r"payload.py not listed in SHA256SUMS"),
    Refusal("release-truncated-model", lambda w: ["verify", str(_truncated_model_release(w))],
            r"model.keras: checksum mismatch"),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[case.name for case in REFUSALS])
def test_bad_input_is_refused_in_one_line(case, world, capsys, monkeypatch):
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    before = snapshot(world)
    code = main(case.argv(world))
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == case.code, out + err
    assert len(lines) == 1 and lines[0].startswith("hematune: error: "), err
    assert re.search(case.says, lines[0]), lines[0]
    assert "Traceback" not in out + err
    assert "secret" not in out + err  # a password in STORAGE= is never printed
    monkeypatch.delenv("HEMATUNE_GRACE_S", raising=False)
    assert snapshot(world) == before


# --- unusable image files: skipped, reported in one line, recorded; the search goes on --------------

BAD_FILES = {  # name → (how to make it, the recorded reason)
    "_0_90.jpg": (lambda p: p.write_bytes(_jpeg_bytes()[:300]), r"unreadable image \((image file is truncated|Truncated File Read)"),
    "_1_91.png": (lambda p: p.write_bytes(b""), r"empty file \(0 bytes\)"),
    "_2_92.jpg": (lambda p: p.write_text("this is a text file named .jpg\n"), r"unreadable image \(cannot identify"),
    "_3_93.png": (lambda p: _png_header_only(p, 30_000, 30_000), r"(decompression bomb|exceeds limit)"),
    "_4_94.png": (lambda p: Image.new("RGB", (1, 1)).save(p), r"1x1 pixels is too small"),
}


def _jpeg_bytes() -> bytes:
    path = Path(tempfile.mkdtemp()) / "x.jpg"
    synthetic_image(0, seed=1, size=(64, 64)).save(path, quality=90)
    return path.read_bytes()


@pytest.fixture(scope="module")
def skipped_run(tmp_path_factory):
    """One search on a data set with every kind of unusable file in it."""
    root = tmp_path_factory.mktemp("bad-files")
    data = tiny_dataset(root / "cells", groups=6)  # one bad file in each of five groups of class0
    for name, (make, _) in BAD_FILES.items():
        make(data / "TRAIN" / "class0" / name)
    studies = root / "studies"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HEMATUNE_CACHE", str(root / "cache"))
        env.setenv("COLUMNS", "1000")  # the report line unwrapped
        out = subprocess.run([sys.executable, "-m", "search", "search", "--data", str(data), "--studies-dir",
                              str(studies), "--study", "bad-files", "--trials", "1", *TINY], cwd=REPO,
                             capture_output=True, text=True, timeout=600, env={**os.environ})
    from search.storage import open_storage

    study = optuna.load_study(study_name="bad-files", storage=open_storage(f"sqlite:///{studies / 'hematune.db'}"))
    return out, study


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_unusable_image_is_skipped_and_reported(name, skipped_run):
    out, study = skipped_run
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stdout + out.stderr
    # one line per part of the split (train, validation) that holds unusable files
    report = [line for line in out.stdout.splitlines() if "unusable image" in line]
    assert sum(int(re.match(r"skipped (\d+) unusable image\(s\)", line).group(1)) for line in report) == len(BAD_FILES)
    assert sum(name in line for line in report) == 1
    recorded = {Path(path).name: why for path, why in study.user_attrs["skipped_images"].items()}
    assert re.search(BAD_FILES[name][1], recorded[name]), recorded[name]
    assert study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))  # the search went on


# --- read-only studies folder: a read-only mount, since root ignores permission bits ---------------------

READ_ONLY_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


@pytest.mark.parametrize("existing", [False, True], ids=["new-study", "existing-study"])
def test_read_only_studies_folder_is_refused_in_one_line(existing, tmp_path):
    data, studies = tiny_dataset(tmp_path / "cells"), tmp_path / "studies"
    studies.mkdir()
    argv = [sys.executable, "-m", "search", "search", "--data", str(data), "--studies-dir", str(studies),
            "--study", "ro", "--trials", "1", *TINY]
    env = {**os.environ, "HEMATUNE_CACHE": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    if existing:
        from search.runner import SearchConfig
        from search.space import parse_fixed
        from search.workers import create_or_check_study

        create_or_check_study(SearchConfig(data=str(data), model="cnn", study="ro", studies_dir=studies,
                                           fixed=parse_fixed(["image_size=32", "blocks=2"]), pruner="none",
                                           max_epochs=1))
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in studies.rglob("*") if p.is_file()}
    if os.geteuid() == 0:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c", READ_ONLY_MOUNT, str(studies), "true"],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"root ignores permission bits, and no read-only mount is possible here: {probe.stderr[:200]}")
        argv = ["unshare", "-rm", "sh", "-c", READ_ONLY_MOUNT, str(studies), *argv]
    else:
        for folder in [studies, *[p for p in studies.rglob("*") if p.is_dir()]]:
            folder.chmod(0o555)
    try:
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    finally:
        for folder in [studies, *[p for p in studies.rglob("*") if p.is_dir()]]:
            folder.chmod(0o755)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hematune")]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and re.search(r"STORAGE=.*cannot open the study database|the study storage failed \(.*readonly",
                                          lines[0]), lines
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in studies.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing changed


# --- a full disk while promoting a release: one line, no partial version, the next promote is whole ------

def _file_size_limit(limit: int):
    def apply() -> None:  # runs in the child: writes past `limit` bytes fail with EFBIG, as on a full disk
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_during_promote_leaves_no_release(world, tmp_path):
    releases = tmp_path / "releases"
    before = snapshot(world)
    promote = [sys.executable, "-m", "search", "promote", "--study", "base", "--studies-dir", str(world.studies),
               "--releases-dir", str(releases), "--reports-dir", str(tmp_path / "reports")]
    env = {**os.environ, "HEMATUNE_CACHE": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    model = max(p.stat().st_size for p in (world.studies / "artifacts" / "base").glob("trial-*.keras"))
    proc = subprocess.run(promote, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=_file_size_limit(model // 2))  # the database fits, the model does not
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hematune")]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and re.search(r"hematune: error: .*model.keras: File too large", lines[0]), lines
    assert not list(releases.glob("*/v*"))  # no version, not even a partial one
    assert snapshot(world) == before
    # the next promote, with room, is whole and verifies; the dead attempt's leftovers are swept
    proc = subprocess.run(promote, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    names = sorted(p.name for p in (releases / "base").iterdir())
    assert "v1" in names and not [n for n in names if n.startswith(".")], names
    assert main(["verify", str(releases / "base" / "v1")]) == 0


# --- ImageNet weights missing on an offline machine: each trial fails with the fix, the run stops in one line ---

def test_missing_imagenet_weights_offline_stop_in_one_line(tmp_path):
    data, studies = tiny_dataset(tmp_path / "cells"), tmp_path / "studies"
    keras_home = tmp_path / "keras-home"  # empty: no weights cached
    keras_home.mkdir()
    offline = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "no_proxy": ""}
    env = {**os.environ, **offline, "KERAS_HOME": str(keras_home), "HEMATUNE_CACHE": str(tmp_path / "cache"),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "search", "search", "--data", str(data), "--studies-dir",
                           str(studies), "--study", "offline", "--model", "mobilenet", "--trials", "1",
                           "--max-epochs", "1", "--fix", "version=v1", "--fix", "alpha_v1=0.25",
                           "--fix", "image_size=96"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hematune")]
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, lines
    assert re.search(r"stopped after 3 failed trials in a row; last: ModelConfigError: MobileNet\(alpha=0.25\): "
                     r"ImageNet weights not found offline; place mobilenet_2_5_224_tf_no_top.h5 in .*keras-home/models/",
                     lines[0]), lines[0]
    study = optuna.load_study(study_name="offline", storage=f"sqlite:///{studies / 'hematune.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 3  # recorded, with the reason
    assert all("ImageNet weights not found offline" in t.user_attrs["fail_reason"] for t in study.trials)
