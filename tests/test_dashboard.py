"""optuna-dashboard as part of hematune: what a search writes for it, the
``hematune dashboard`` server, a real browser on the rendered pages, and a
dashboard stopped again and again while a search writes the same SQLite file.

The browser is Debian's chromium driven by Playwright (``executable_path``);
nothing is downloaded at run time. Set HEMATUNE_SCREENSHOT_DIR=docs to refresh
the README's screenshot.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna_dashboard import get_note, save_note

from search import artifacts
from search.annotate import TrialAnnotator, annotate_study, study_artifacts, sync_model_artifacts
from search.artifact_store import AtomicFileSystemArtifactStore, StudiesArtifactStore
from search.cli import main
from search.dashboard import open_storage_for_dashboard
from search.layout import dashboard_dir
from search.runner import SearchConfig, run_search
from tests.conftest import make_class_folder

REPO = Path(__file__).resolve().parent.parent
HEMATUNE = Path(sys.executable).parent / "hematune"
CHROMIUM = os.environ.get("HEMATUNE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STUDY, KEEP = "dash", 2
FIXED = {"image_size": 32, "blocks": 2}


def _dataset(root: Path) -> Path:
    for label in range(3):
        make_class_folder(root / "TRAIN" / f"class{label}", label, 4, 4)
        make_class_folder(root / "TEST" / f"class{label}", label, 2, 3, group_offset=100)
    return root


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """A real 3-trial CNN study (2 epochs, 32 px) with the top 2 keeping model files."""
    base = tmp_path_factory.mktemp("dash")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEMATUNE_CACHE", str(base / "cache"))
        root = _dataset(base / "cells")
        outcome = run_search(SearchConfig(data=str(root), model="cnn", study=STUDY, studies_dir=base / "studies",
                                          trials=3, max_epochs=2, fixed=FIXED, pruner="none", keep_top=KEEP))
    return base / "studies", outcome.study


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_dashboard(studies: Path, port: int, study: str | None = None, storage: str | None = None):
    cmd = [str(HEMATUNE), "dashboard", "--studies-dir", str(studies), "--port", str(port)]
    cmd += ["--study", study] if study else []
    cmd += ["--storage", storage] if storage else []
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def _wait_for_url(proc, limit_s=180) -> str:
    """The URL the dashboard prints once it listens (a reader thread: stdout may stay silent)."""
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(limit_s)
    line = found[0] if found else ""
    if "http://" not in line:
        proc.kill()
        raise AssertionError(f"dashboard did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return line.split("http://", 1)[1].split()[0]


def test_study_note_and_trial_annotations(small_study):
    studies, study = small_study
    note = get_note(study)
    assert "## Split" in note and study.user_attrs["split_rule"] in note
    assert all(f"`{c}`" in note for c in study.user_attrs["classes"]) and "| group validation | 4 | 4 | 4 |" in note
    assert study.metric_names == ["group_val_accuracy"]

    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial in trials:
        assert [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)] == pytest.approx(
            trial.user_attrs["val_accuracy_per_epoch"], abs=1e-5)
        assert get_note(optuna.Trial(study, trial._trial_id)).startswith(f"## Trial {trial.number} · `cnn` · COMPLETE")
    # the first KEEP trials were in the top-k when they finished, so they were evaluated
    n_val = sum(study.user_attrs["val_counts"].values())
    for trial in trials[:KEEP]:
        assert trial.user_attrs["latency_ms_batch1"] > 0
        metas = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
        assert sorted(m.filename for m in metas) == ["confusion-matrix-val.png", "metrics-val.json"]
        store = AtomicFileSystemArtifactStore(dashboard_dir(studies, STUDY))
        by_name = {m.filename: m.artifact_id for m in metas}
        with store.open_reader(by_name["confusion-matrix-val.png"]) as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        with store.open_reader(by_name["metrics-val.json"]) as f:
            metrics = json.load(f)
        # computed on the group-validation set at the best epoch: same images, same accuracy as the trial value
        assert sum(map(sum, metrics["confusion_matrix"])) == n_val
        assert metrics["accuracy"] == pytest.approx(trial.value, abs=1e-6)
        assert trial.user_attrs["val_macro_f1"] == pytest.approx(metrics["macro_f1"], abs=1e-5)
        note = get_note(optuna.Trial(study, trial._trial_id))
        assert "### Per class (group validation" in note
        assert all(f"| {c} | " in note for c in study.user_attrs["classes"])
    # model files are study artifacts, exactly the top-k files on disk
    on_disk = sorted(p.name for p in artifacts.artifacts_dir(studies, STUDY).glob("trial-*.keras"))
    assert len(on_disk) == KEEP
    assert sorted(m["filename"] for m in study_artifacts(study)) == on_disk


def test_model_artifacts_follow_the_top_k(small_study, tmp_path):
    """A trial leaving the top-k loses its model artifact (file and listing); a new top file gains one."""
    studies = tmp_path / "studies"
    shutil.copytree(small_study[0], studies)
    storage = open_storage_for_dashboard(f"sqlite:///{studies / 'hematune.db'}")
    study = optuna.load_study(study_name=STUDY, storage=storage)
    folder = artifacts.artifacts_dir(studies, STUDY)
    kept = sorted(folder.glob("trial-*.keras"))
    dropped, survivor = kept[0], kept[1]
    dropped_id = next(m["artifact_id"] for m in study_artifacts(study) if m["filename"] == dropped.name)
    dropped.unlink()  # what artifacts.sweep does when the trial leaves the top-k
    newcomer = folder / "trial-00099.keras"
    shutil.copy(survivor, newcomer)

    assert sync_model_artifacts(study, studies) == {int(survivor.stem[6:]), 99}
    assert sorted(m["filename"] for m in study_artifacts(study)) == [survivor.name, newcomer.name]
    assert not (dashboard_dir(studies, STUDY) / dropped_id).exists()
    with pytest.raises(ArtifactNotFound):
        StudiesArtifactStore(studies).open_reader(dropped_id)
    assert sync_model_artifacts(study, studies) == {int(survivor.stem[6:]), 99}  # idempotent
    assert len(study_artifacts(study)) == 2


def test_study_note_is_written_once_and_never_overwritten():
    study = optuna.create_study(storage="sqlite:///:memory:")
    study.set_user_attr("classes", ["a", "b"])
    assert annotate_study(study) is True
    assert "## Data" in get_note(study)
    save_note(study, "my own findings")
    assert annotate_study(study) is False
    assert get_note(study) == "my own findings"


def test_pruned_failed_and_unreadable_trials_still_get_a_note(tmp_path):
    """The wrapper notes every outcome, and a broken model file costs the trial nothing."""
    study = optuna.create_study(study_name="w", storage="sqlite:///:memory:", direction="maximize")
    warnings: list[str] = []
    annotator = TrialAnnotator(data=None, studies_dir=tmp_path, keep_top=3, warn=warnings.append)
    broken = artifacts.model_path(tmp_path, "w", 2)
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a keras file")

    def objective(trial):
        trial.set_user_attr("family", "cnn")
        trial.set_user_attr("val_accuracy_per_epoch", [0.5, 0.25])
        trial.set_user_attr("val_loss_per_epoch", [1.0, 1.2])
        trial.set_user_attr("best_epoch", 0)
        if trial.number == 0:
            trial.set_user_attr("prune_reason", "pruned at epoch 2: behind other trials")
            raise optuna.TrialPruned()
        if trial.number == 1:
            trial.set_user_attr("fail_reason", "TrialFailed: loss became NaN")
            raise RuntimeError("nan")
        return 0.5

    study.optimize(annotator.wrap(objective), n_trials=3, catch=(RuntimeError,))
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    notes = [get_note(optuna.Trial(study, t._trial_id)) for t in study.trials]
    assert notes[0].startswith("## Trial 0 · `cnn` · PRUNED") and "behind other trials" in notes[0]
    assert notes[1].startswith("## Trial 1 · `cnn` · FAIL") and "loss became NaN" in notes[1]
    assert notes[2].startswith("## Trial 2 · `cnn` · COMPLETE") and "| 1 ★ | 0.5000 | 1.0000 |" in notes[2]
    assert study.trials[2].user_attrs["annotation_error"].startswith("metrics: ")
    assert len(warnings) == 1 and "trial 2" in warnings[0]


def test_artifact_writes_are_whole_or_absent(tmp_path):
    store = AtomicFileSystemArtifactStore(tmp_path / "store")
    source = tmp_path / "model.bin"
    source.write_bytes(b"x" * 5000)
    with open(source, "rb") as f:
        store.write("11111111-aaaa", f)
    assert (tmp_path / "store" / "11111111-aaaa").read_bytes() == b"x" * 5000

    class Broken:
        name = None
        calls = 0

        def read(self, n):
            self.calls += 1
            if self.calls > 1:
                raise OSError("disk gone")
            return b"partial"

    with pytest.raises(OSError):
        store.write("22222222-bbbb", Broken())
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["11111111-aaaa"]


def test_dashboard_user_errors_are_one_line(small_study, tmp_path, capsys):
    studies, _ = small_study
    assert main(["dashboard", "--studies-dir", str(tmp_path / "none"), "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hematune: error: STORAGE=") and "no study database" in err and "\n" not in err
    assert main(["dashboard", "--studies-dir", str(studies), "--study", "nope", "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert "STUDY=nope: no such study" in err and STUDY in err and "\n" not in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["dashboard", "--studies-dir", str(studies), "--port", str(busy.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_make_dashboard_passes_its_variables():
    out = subprocess.run(["make", "-n", "dashboard", "STUDY=s1", "PORT=9123", "STORAGE=sqlite:///x.db"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    line = [l for l in out.splitlines() if "hematune dashboard" in l][0]
    assert '--port 9123' in line and '--study "s1"' in line and '--storage "sqlite:///x.db"' in line


def test_dashboard_in_a_real_browser(small_study, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"chromium not found at {CHROMIUM}: install Debian's chromium (apt-get install -y chromium; "
                    ".ci/run does) or set HEMATUNE_CHROMIUM")
    from playwright.sync_api import expect, sync_playwright

    studies, study = small_study
    best = study.best_trial.number
    proc = _start_dashboard(studies, _free_port(), study=STUDY)
    try:
        url = _wait_for_url(proc)
        assert url.startswith("127.0.0.1:") and url.endswith(f"/dashboard/studies/{study._study_id}")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1920, "height": 1080})  # a common screen
            page.goto(f"http://{url}")
            expect(page.get_by_text(f"{STUDY} (id={study._study_id})").first).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Study Artifacts")).to_be_visible()
            page.goto(f"http://{url}/note")
            expect(page.get_by_role("heading", name="Split")).to_be_visible(timeout=30_000)

            page.goto(f"http://{url}/trials?numbers={best}")
            for number in range(3):  # the trial rows
                expect(page.get_by_text(f"Trial {number}", exact=True).first).to_be_visible(timeout=30_000)
            note = page.get_by_role("heading", name=f"Trial {best} · cnn · COMPLETE")
            expect(note).to_be_visible()
            expect(page.get_by_role("heading", name="Per class (group validation, best epoch)",
                                    exact=False)).to_be_visible()
            attrs = study.best_trial.user_attrs
            for attr in ("family", "best_val_accuracy", "best_epoch", "latency_ms_batch1", "weights_origin", "device",
                         "val_macro_f1"):  # the user-attribute table: "<key> <value>"
                expect(page.get_by_text(f"{attr} {attrs[attr]}", exact=True)).to_be_visible()
            expect(page.get_by_text("confusion-matrix-val.png").first).to_be_visible()
            figure = page.locator("img[src*='artifacts']").first
            expect(figure).to_be_visible()
            assert figure.evaluate("img => img.complete && img.naturalWidth > 100")  # the PNG was served

            shots = [tmp_path / "dashboard.png"]
            if os.environ.get("HEMATUNE_SCREENSHOT_DIR"):
                shots.append(Path(os.environ["HEMATUNE_SCREENSHOT_DIR"]) / "dashboard.png")
            for shot in shots:
                shot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shot))
            browser.close()
        assert shots[0].stat().st_size > 10_000
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0  # Ctrl-C is a normal way to stop it
        proc.stdout.close()
        proc.stderr.close()


def test_stopping_the_dashboard_never_breaks_a_running_search(tmp_path):
    """A search in its own process; meanwhile the dashboard is started, queried
    and stopped (SIGINT, then SIGKILL, alternately) again and again on the same
    SQLite file, each time in the middle of a request."""
    root = _dataset(tmp_path / "cells")
    studies, trials = tmp_path / "studies", 3
    env = {**os.environ, "HEMATUNE_CACHE": str(tmp_path / "cache")}
    search = subprocess.Popen(
        [str(HEMATUNE), "search", "--model", "cnn", "--data", str(root), "--studies-dir", str(studies),
         "--study", "busy", "--trials", str(trials), "--max-epochs", "2", "--pruner", "none",
         "--fix", "image_size=32", "--fix", "blocks=2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(search.stdout), daemon=True)
    reader.start()
    stopped_during_search = cycle = 0
    try:
        while search.poll() is None and not any(l.startswith("trial 0 ") for l in lines):
            time.sleep(0.2)  # the study exists and its first trial is training
        while search.poll() is None:
            dashboard = _start_dashboard(studies, _free_port(), study="busy")
            api = "http://" + _wait_for_url(dashboard).split("/dashboard")[0] + "/api/studies"
            with urllib.request.urlopen(api, timeout=60) as response:
                assert response.status == 200
            request = threading.Thread(target=_quietly_get, args=(f"{api}/1",), daemon=True)
            request.start()
            time.sleep(0.05)  # let the request reach the server
            stopped_during_search += search.poll() is None
            dashboard.send_signal(signal.SIGKILL if cycle % 2 else signal.SIGINT)
            dashboard.wait(30)
            dashboard.stdout.close()
            dashboard.stderr.close()
            cycle += 1
        search.wait()
        reader.join(30)
    finally:
        if search.poll() is None:
            search.kill()
    output = "".join(lines)
    print(f"dashboard stopped {cycle} times, {stopped_during_search} of them while the search ran")
    assert search.returncode == 0, output[-3000:]
    assert stopped_during_search >= 1
    assert "locked" not in output
    study = optuna.load_study(study_name="busy", storage=f"sqlite:///{studies / 'hematune.db'}")
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.COMPLETE] * trials, output[-3000:]


def _quietly_get(url: str) -> None:
    try:
        urllib.request.urlopen(url, timeout=30).read()
    except OSError:
        pass  # the server was killed mid-request: that is the point
