"""``hematune serve``: the parser and the command (registered by `search.cli`).

Imports nothing heavy at module level (``hematune --help`` stays fast). The
checks that need no model run before the port is bound: which release,
the host/token rule, the port; the release is then verified and loaded in
the background while ``/health`` says ``loading``, and a release that fails
verification stops the server with one line and exit status 2.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from reports.errors import ReportError

TOKEN_ENV = "HEMATUNE_TOKEN"
MIN_TOKEN = 16
NEW_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe())'"


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be positive")
        return value
    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 65535")
    return value


def add_parser(commands) -> None:
    serve = commands.add_parser(
        "serve", help="serve a release: browser upload page and JSON prediction API",
        description="Verify a release, then serve it: an upload page at /, POST /predict (multipart files or "
                    "JSON base64), GET /health, GET /model, API docs at /docs. Serving a release name follows "
                    "its champion pointer without a restart.")
    which = serve.add_mutually_exclusive_group()
    which.add_argument("--name", help="release name: serve the champion of <releases-dir>/<name> and follow it")
    which.add_argument("--release", help="releases/<name> (its champion, followed) or releases/<name>/v<N> "
                                         "(that version only)")
    serve.add_argument("--releases-dir", default="releases", type=Path, help="(default: releases)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1); any other than loopback needs a token")
    serve.add_argument("--port", type=_port, default=8000, help="(default 8000; 0 picks a free one)")
    serve.add_argument("--token", help=f"bearer token every API call must send (default: ${TOKEN_ENV}); "
                                       f"at least {MIN_TOKEN} characters")
    serve.add_argument("--max-file-mb", type=_positive(float), default=20.0, help="upload limit per file (default 20)")
    serve.add_argument("--max-files", type=_positive(int), default=64, help="files per request (default 64)")
    serve.add_argument("--max-request-mb", type=_positive(float), default=100.0,
                       help="limit of a whole request body (default 100)")
    serve.add_argument("--max-batch", type=_positive(int), default=64,
                       help="most images one model call takes from concurrent requests (default 64; "
                            "1 runs every request alone)")


def release_target(args) -> Path:
    """The folder to serve: --release, or --name under --releases-dir, or the only release name there."""
    if args.release:
        return Path(args.release)
    base = Path(args.releases_dir)
    if args.name:
        return base / args.name
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


def cmd_serve(args) -> int:
    import uvicorn

    from serving.app import ServeOptions, create_app
    from serving.champion import Champion
    from serving.uploads import MB, Limits

    token = check_token(args.host, args.token if args.token is not None else (os.environ.get(TOKEN_ENV) or None))
    champion = Champion(release_target(args))
    champion.check_target()  # a missing folder fails here; a bad release once verified, still before any request
    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    options = ServeOptions(limits=Limits(int(args.max_file_mb * MB), args.max_files, int(args.max_request_mb * MB)),
                           token=token, max_batch=args.max_batch)
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
    shown = f"[{args.host}]" if ":" in args.host else args.host
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
    return 0


COMMANDS = {"serve": cmd_serve}
