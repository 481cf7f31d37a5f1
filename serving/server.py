"""``hematune serve``: check the settings, bind the port, run the server (the CLI, `search.cli`, parses them).

Imports nothing heavy at module level (``hematune --help`` stays fast). The
checks that need no model run before the port is bound: which release,
the host/token rule, the port; the release is then verified and loaded in
the background while ``/health`` says ``loading``, and a release that fails
verification stops the server with one line and exit status 2.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path

from reports.errors import ReportError

TOKEN_ENV = "HEMATUNE_TOKEN"
MIN_TOKEN = 16
NEW_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe())'"


def release_target(release: str | None, name: str | None, releases_dir: Path) -> Path:
    """The folder to serve: --release, or --name under --releases-dir, or the only release name there."""
    if release:
        return Path(release)
    base = Path(releases_dir)
    if name:
        return base / name
    names = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if base.is_dir() else []
    if len(names) == 1:
        return base / names[0]
    known = f" (releases there: {', '.join(names[:10])})" if names else f"; promote one first (no release in {base})"
    raise ReportError(f"say which release to serve: NAME=<name> or RELEASE=releases/<name>/v<N>{known}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_token(host: str, token: str | None) -> str | None:
    if token is not None and len(token) < MIN_TOKEN:
        raise ReportError(f"TOKEN: {len(token)} characters is too guessable; use at least {MIN_TOKEN}, e.g. "
                          f"from {NEW_TOKEN}")
    if token is None and not is_loopback(host):
        raise ReportError(f"HOST={host} is reachable from other machines, so the API needs a token: set "
                          f"TOKEN=… ({TOKEN_ENV}=… or --token; e.g. from {NEW_TOKEN}), or keep HOST=127.0.0.1")
    return token


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a busy port is one line. Made with an explicit IPPROTO_TCP: asyncio
    turns Nagle's algorithm off (TCP_NODELAY) only on sockets that say so, and without it every keep-alive
    response waits ~40 ms for the client's delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        return sock
    except OSError as exc:
        sock.close()
        raise ReportError(f"PORT={port}: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                          "choose another PORT= or HOST=") from None


def serve(target: Path, host: str, port: int, token: str | None, max_file_mb: float, max_files: int,
          max_request_mb: float, max_batch: int) -> None:
    """Serve the release at ``target`` until Ctrl-C; ``token`` None reads ``$HEMATUNE_TOKEN``."""
    import uvicorn

    from serving.app import ServeOptions, create_app
    from serving.champion import Champion
    from serving.uploads import MB, Limits

    token = check_token(host, token if token is not None else (os.environ.get(TOKEN_ENV) or None))
    champion = Champion(target)
    champion.check_target()  # a missing folder fails here; a bad release once verified, still before any request
    sock = bind(host, port)
    port = sock.getsockname()[1]
    options = ServeOptions(limits=Limits(int(max_file_mb * MB), max_files, int(max_request_mb * MB)),
                           token=token, max_batch=max_batch)
    fatal: list[str] = []

    def on_fatal(line: str) -> None:
        fatal.append(line)
        server.should_exit = True

    def on_ready(loaded) -> None:
        test = loaded.metrics.get("test") or {}
        accuracy = f", TEST accuracy {test['accuracy']:.4f}" if isinstance(test.get("accuracy"), float) else ""
        follow = " (follows its champion)" if champion.follows_pointer else ""
        print(f"ready: {loaded.name} {loaded.version}{follow}, verified, sha256 {loaded.sha256[:12]}…, "
              f"{len(loaded.labels)} classes, {loaded.image_size} px{accuracy}", flush=True)

    app = create_app(champion, options, on_fatal=on_fatal, on_ready=on_ready)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, server_header=False,
                                           timeout_graceful_shutdown=10))
    shown = f"[{host}]" if ":" in host else host
    print(f"hematune serve: {champion.target} on http://{shown}:{port}/  (API docs /docs; "
          f"{'bearer token required' if token else 'no token'}; Ctrl-C stops it); verifying and loading…", flush=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, after a clean shutdown
        pass
    finally:
        sock.close()
    if fatal:
        raise ReportError(fatal[0])
    print("hematune serve: stopped", file=sys.stderr)
