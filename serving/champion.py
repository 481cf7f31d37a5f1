"""The release a server answers with, and how it follows ``releases/<name>/champion``.

Every release is checked by `reports.release.verify` (checksums, nothing
added or missing, safe-mode load) before it answers anything — the same
checks as ``hematune verify``.

Serving a release *name* follows its champion pointer: each request reads the
pointer (a few bytes; `promote` replaces it atomically) and, when it names
another version, that version is verified and loaded, then answers this and
later requests. A request already running keeps the `LoadedRelease` it
started with, so it finishes on its model. A new champion that fails
verification is not served: the previous one keeps answering and ``/health``
says why. Serving one *version* (``releases/<name>/v3``) never switches.
"""
from __future__ import annotations

import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from reports.errors import ReportError
from search.storage import redacted
from serving.batching import warm_up

# reports.release imports Keras: it is imported where a release is loaded, after the port is bound, so
# `/health` can say "loading" while TensorFlow starts.


class NotReady(RuntimeError):
    """No release is loaded yet (the server is still starting)."""


@dataclass(frozen=True)
class LoadedRelease:
    """One verified release version in memory, with what the API and the page show of it."""

    name: str
    version: str
    path: Path
    model: object  # keras.Model
    labels: list[str]
    image_size: int
    sha256: str  # of model.keras, as listed in SHA256SUMS
    metrics: dict
    card: dict  # the model card's front matter
    card_sections: dict[str, str] = field(default_factory=dict)  # "intended_use", "limitations" (Markdown)

    def identity(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    def describe(self) -> dict:
        """What ``GET /model`` answers and the page's model panel shows."""
        from reports.release import STAGE_TITLES  # loaded already: this release was verified with it

        test = self.metrics.get("test") or {}
        selection = self.metrics.get("selection") or {}  # a `make promote STAGE=` release names its stage
        return {
            **self.identity(),
            "path": str(self.path),
            "labels": self.labels,
            "image_size": self.image_size,
            "family": self.metrics.get("family"),
            "created": self.metrics.get("created"),
            "study": self.metrics.get("study"),
            "trial": self.metrics.get("trial"),
            "stage": selection.get("stage", "trial"),
            "stage_title": selection.get("title", STAGE_TITLES["trial"]),
            "test_accuracy": test.get("accuracy"),
            "test_accuracy_ci95": test.get("accuracy_ci95"),
            "test_images": test.get("images"),
            "validation_accuracy": (self.metrics.get("validation") or {}).get("accuracy"),
            "intended_use": self.card_sections.get("intended_use", ""),
            "limitations": self.card_sections.get("limitations", ""),
            "metrics": {**self.metrics, "storage": redacted(str(self.metrics.get("storage", "")))},  # no password
            "card": self.card,
        }


def _card_parts(text: str) -> tuple[dict, dict[str, str]]:
    """Front matter and the "Intended use" / "Limitations" sections of a MODEL_CARD.md."""
    front: dict = {}
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    if match:
        front = yaml.safe_load(match.group(1)) or {}
    sections = {}
    for key, heading in (("intended_use", "Intended use"), ("limitations", "Limitations")):
        found = re.search(rf"^## {heading}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
        sections[key] = found.group(1).strip() if found else ""
    return front, sections


def load_release(path: Path) -> LoadedRelease:
    """Verify one release version (or a name's champion) and load it; ReportError says what is wrong."""
    from reports.release import CARD, MODEL, verify
    from reports.study import sha256_file

    checked = verify(path)
    folder = checked.path
    warm_up(checked.model, int(checked.preprocessing["image_size"]))
    front, sections = _card_parts((folder / CARD).read_text())
    return LoadedRelease(
        name=str(checked.metrics.get("release") or folder.parent.name), version=folder.name, path=folder,
        model=checked.model, labels=list(checked.labels), image_size=int(checked.preprocessing["image_size"]),
        sha256=sha256_file(folder / MODEL), metrics=checked.metrics, card=front, card_sections=sections)


class Champion:
    """The served release: loaded once at start, switched when the champion pointer moves."""

    def __init__(self, target: str | Path, log=None):
        self.target = Path(target)
        self.follows_pointer = False  # serving a name folder, not one version (known once loaded)
        self.reload_error: str | None = None  # why the newest champion is not being served
        self._current: LoadedRelease | None = None
        self._refused: str | None = None  # a pointer value that failed verification (not retried)
        self._lock = threading.Lock()
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))

    def check_target(self) -> None:
        """The one check cheap enough to run before the port is bound (everything else needs Keras)."""
        if not self.target.is_dir():
            raise ReportError(f"RELEASE={self.target}: no such release folder")

    def load(self) -> LoadedRelease:
        """The first load; a failure is the caller's to report (the server must not start)."""
        from reports.release import SUMS

        with self._lock:
            self._current = load_release(self.target)
            self.follows_pointer = not (self.target / SUMS).is_file()
            return self._current

    def loaded(self) -> LoadedRelease:
        if self._current is None:
            raise NotReady("the model is still loading")
        return self._current

    def current(self) -> LoadedRelease:
        """The release this request should use: the champion the pointer names now (loaded if new)."""
        loaded = self.loaded()
        if not self.follows_pointer:
            return loaded
        from reports.release import VERSION, champion

        pointer = champion(self.target)
        if pointer in (None, loaded.version, self._refused):
            return loaded
        with self._lock:  # one request loads the new version; the others wait for it, then use it
            loaded = self._current
            if pointer in (loaded.version, self._refused):
                return loaded
            try:
                if not VERSION.match(pointer):
                    raise ReportError(f"{self.target / 'champion'} holds {pointer[:40]!r}, not a version like v2")
                fresh = load_release(self.target / pointer)
            except Exception as exc:  # noqa: BLE001 - whatever is wrong with the new one, the old one keeps serving
                self._refused, self.reload_error = pointer, f"champion {pointer} not served: {exc}"
                self._log(f"hematune serve: {self.reload_error}; still serving {loaded.version}")
                return loaded
            self._current, self._refused, self.reload_error = fresh, None, None
            self._log(f"hematune serve: champion is now {fresh.name} {fresh.version} (sha256 {fresh.sha256[:12]}…)")
            return fresh
