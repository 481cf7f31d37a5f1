"""What this test process opened or listed, recorded with a PEP 578 audit hook.

The hook is installed once per process (it cannot be removed) and records
only inside a ``with OpenedPaths(...)`` block. The search, select and report
tests use it to prove which files under TEST/ are read (or never read).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

OPEN_AND_LIST = ("open", "os.scandir", "os.listdir")


class OpenedPaths:
    """Paths opened (and, by default, folders listed) inside the ``with`` block."""

    active: OpenedPaths | None = None
    installed = False

    def __init__(self, events: tuple[str, ...] = OPEN_AND_LIST):
        self.events = events
        self.paths: list[str] = []

    def __enter__(self):
        if not OpenedPaths.installed:
            sys.addaudithook(OpenedPaths._hook)
            OpenedPaths.installed = True
        OpenedPaths.active = self
        return self

    def __exit__(self, *exc):
        OpenedPaths.active = None

    def under(self, folder: Path) -> list[str]:
        prefix = str(folder) + os.sep
        return [p for p in self.paths if p.startswith(prefix)]

    @staticmethod
    def _hook(event, args):
        recorder = OpenedPaths.active
        if recorder is not None and event in recorder.events and args and isinstance(args[0], (str, bytes, os.PathLike)):
            recorder.paths.append(os.fsdecode(args[0]))
