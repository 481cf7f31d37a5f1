"""Where the dashboard's artifacts (trial figures, top-k model copies) are kept.

Optuna's artifact API stores a file under a UUID in an *artifact store* and
records its name in the study storage. hematune keeps one file-system store
per study, ``<studies>/artifacts/<study>/dashboard/``, beside that study's
top-k model files, so removing a study's folder removes everything it wrote.
This module imports no deep-learning backend: the dashboard starts in a second.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import BinaryIO

from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from data_pipeline.files import replacing
from search.layout import artifacts_root, dashboard_dir, uploads_dir


class AtomicFileSystemArtifactStore(FileSystemArtifactStore):
    """Optuna's file-system store, but a write lands whole or not at all.

    Optuna's own store writes straight to the final name, so a killed search
    could leave a truncated artifact. A file being uploaded is hard-linked
    rather than copied when the disk allows it (model files can be hundreds of
    MB; a top-k model file is replaced by rename, never rewritten in place, so
    the link keeps its content).
    """

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        target = self._get_filepath(artifact_id)
        source = getattr(content_body, "name", None)
        with replacing(target) as tmp:
            if not (isinstance(source, str) and os.path.isfile(source) and _linked(source, tmp)):
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(content_body, out, 1 << 20)



def _linked(source: str, link: Path) -> bool:
    try:
        os.link(source, link)
        return True
    except OSError:
        return False  # another file system, or no hard links: copy


def study_store(studies_dir: Path, study_name: str) -> AtomicFileSystemArtifactStore:
    folder = dashboard_dir(studies_dir, study_name)
    folder.mkdir(parents=True, exist_ok=True)
    return AtomicFileSystemArtifactStore(folder)


class StudiesArtifactStore:
    """The dashboard's store: finds an artifact in any study's folder.

    Artifact ids are UUIDs, so an id names one file whichever study wrote it,
    and one store serves every study the dashboard lists. Files uploaded from
    the dashboard page itself go to ``<studies>/artifacts/_uploads``.
    """

    def __init__(self, studies_dir: Path):
        self.root = artifacts_root(studies_dir)
        self.uploads = uploads_dir(studies_dir)

    def _find(self, artifact_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-fA-F-]{1,64}", artifact_id):
            raise ArtifactNotFound(f"invalid artifact id {artifact_id!r}")
        for folder in [self.uploads, *sorted(self.root.glob("*/dashboard"))]:
            if (folder / artifact_id).is_file():
                return folder / artifact_id
        raise ArtifactNotFound(f"artifact {artifact_id} not found under {self.root}")

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return open(self._find(artifact_id), "rb")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        AtomicFileSystemArtifactStore(self.uploads).write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self._find(artifact_id).unlink()
