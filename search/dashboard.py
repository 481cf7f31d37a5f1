"""``hematune dashboard``: optuna-dashboard on the study storage, local only.

The server binds to 127.0.0.1 — the dashboard can rename and delete studies
and has no login, so it is not put on the network; reach it from elsewhere
through an SSH tunnel (``ssh -L 8080:127.0.0.1:8080 host``).

It only reads the storage unless someone edits a note or deletes something on
the page, so it can run beside a search on the same SQLite file; stopping it
(Ctrl-C or kill) cannot break the search, because SQLite releases a dead
reader's locks and the search waits up to 60 s for a busy database.
"""
from __future__ import annotations

import sys
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from search.errors import SearchConfigError
from search.storage import open_storage, redacted

HOST = "127.0.0.1"


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    """One thread per connection: browsers keep idle connections open, which
    would stall a one-request-at-a-time server."""

    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 — the base class's name
        pass  # one line per static file and API poll drowns the URL


def open_storage_for_dashboard(url: str):
    """The search's own storage (same SQLite tuning, same PostgreSQL driver choice), but it
    refuses a SQLite file that does not exist (optuna would silently create an empty database there)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SearchConfigError(f"STORAGE={url}: not a database URL; e.g. sqlite:///studies/hematune.db") from None
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:" or not Path(parsed.database).expanduser().is_file():
            raise SearchConfigError(f"STORAGE={url}: no study database there; run `make search` first "
                                    "or point STORAGE= at an existing one")
    return open_storage(url)


def study_path(storage, study: str | None) -> str:
    """The dashboard page of ``study`` ("/dashboard/studies/<id>"), or the study list."""
    if not study:
        return "/dashboard"
    import optuna

    try:
        study_id = storage.get_study_id_from_name(study)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
        known = ", ".join(names[:20]) + (" …" if len(names) > 20 else "") if names else "none"
        raise SearchConfigError(f"STUDY={study}: no such study in this storage (studies: {known})") from None
    return f"/dashboard/studies/{study_id}"


def serve(storage_url: str, studies_dir: Path, port: int, study: str | None = None, out=sys.stdout) -> None:
    """Run the dashboard until interrupted; prints the URL once the port is bound."""
    import optuna_dashboard

    from search.artifact_store import StudiesArtifactStore

    if not 0 < port < 65536:
        raise SearchConfigError(f"PORT={port}: must be between 1 and 65535")
    storage = open_storage_for_dashboard(storage_url)
    path = study_path(storage, study)
    app = optuna_dashboard.wsgi(storage, artifact_store=StudiesArtifactStore(studies_dir))
    try:
        server = make_server(HOST, port, app, server_class=_ThreadedServer, handler_class=_QuietHandler)
    except OSError as exc:
        raise SearchConfigError(f"PORT={port}: cannot listen on {HOST}:{port} ({exc.strerror}); "
                                "choose another PORT=") from None
    print(f"optuna-dashboard for {redacted(storage_url)}: http://{HOST}:{port}{path}  (Ctrl-C stops it)", file=out, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
