"""The FastAPI application: the upload page, ``POST /predict``, ``GET /health``, ``GET /model``.

Why these choices:

* **FastAPI on uvicorn**: a well-kept ASGI stack with OpenAPI docs for free;
  `fastapi_offline` serves those docs (``/docs``) from the package instead of
  a CDN, as the page does, because lab networks are often offline.
* **Ready means verified.** The model loads in a background thread after the
  port is bound; until it is loaded and verified, ``/health`` answers 503
  ``loading`` and ``/predict`` 503. If verification fails, ``on_fatal`` is
  called (the CLI stops the server and exits 2 with that line).
* **Every refusal is one JSON line**, ``{"error": "<file>: <reason>"}``, with
  a 4xx status; a failure inside the server is a 500 with the same shape and
  never a traceback. There is no debug mode.
* **Token.** With a token, every API call needs ``Authorization: Bearer
  <token>`` (compared in constant time); the page and its files carry no
  data and stay open, and the page asks for the token.
"""
from __future__ import annotations

import hmac
import sys
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from data_pipeline.cache import decode_image
from reports.errors import ReportError
from serving.batching import Batcher
from serving.champion import Champion, LoadedRelease, NotReady
from serving.uploads import JSON_SHAPE, BadInput, Limits, Upload, join_problems, read_uploads

STATIC = Path(__file__).resolve().parent / "static"
PAGE_HEADERS = {  # the page loads nothing from elsewhere, and user file names are only ever text
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class ServeOptions:
    limits: Limits = field(default_factory=Limits)
    token: str | None = None
    max_batch: int = 64  # most images one model call takes from concurrent requests; 1 = each request alone


def _error(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def decode_uploads(uploads: list[Upload], size: int) -> np.ndarray:
    """Every upload through the one decoder training and ``predict`` use; 422 naming each unusable file."""
    pixels, problems = [], []
    for upload in uploads:
        try:
            pixels.append(decode_image(upload.data, size))
        except ValueError as exc:
            problems.append(f"{upload.name}: {exc}")
    if problems:
        raise BadInput(422, join_problems(problems))
    return np.stack(pixels)


def prediction(name: str, probs: np.ndarray, release: LoadedRelease) -> dict:
    order = np.argsort(-probs)
    return {
        "file": name,
        "label": release.labels[int(order[0])],
        "confidence": float(probs[order[0]]),
        "probabilities": {label: float(p) for label, p in zip(release.labels, probs)},
        "top3": [{"label": release.labels[int(k)], "confidence": float(probs[k])} for k in order[:3]],
        "model": release.identity(),
    }


_PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            "description": "one or more image files (any field name; each part needs a file name)"}},
        "application/json": {"schema": {"oneOf": [
            {"type": "object", "required": ["image"], "properties": {"image": {"type": "string", "format": "byte"}}},
            {"type": "object", "required": ["images"],
             "properties": {"images": {"type": "array", "items": {"type": "string", "format": "byte"}}}}]}},
    },
}
_ERRORS = {status: {"description": text, "content": {"application/json": {"example": {"error": example}}}}
           for status, text, example in (
               (400, "malformed body: bad base64, wrong JSON shape, no image", "images[1]: not valid base64 (…)"),
               (401, "missing or wrong bearer token", "missing or wrong bearer token; send 'Authorization: Bearer …'"),
               (413, "over an upload limit", "big.tif: larger than the 20 MB upload limit per file (--max-file-mb)"),
               (415, "neither multipart/form-data nor application/json", "content type 'text/plain' is not accepted…"),
               (422, "a file is not a usable image", "notes.txt: unreadable image (cannot identify image file)"),
               (503, "the model is still loading", "the model is still loading; GET /health says when it is ready"))}


def create_app(champion: Champion, options: ServeOptions | None = None, on_fatal=None, on_ready=None):
    """The application for one served release. ``on_fatal(line)``: the release failed verification at
    start (default: print it); ``on_ready(release)``: it is loaded and verified."""
    options = options or ServeOptions()
    batcher = Batcher(options.max_batch)
    status = {"state": "loading", "error": None}

    def load() -> None:
        try:
            loaded = champion.load()
        except Exception as exc:  # noqa: BLE001 - any failure means this release must not serve
            line = str(exc) if isinstance(exc, ReportError) else f"{champion.target}: {type(exc).__name__}: {exc}"
            status.update(state="failed", error=line)
            (on_fatal or (lambda text: print(f"hematune: error: {text}", file=sys.stderr, flush=True)))(line)
            return
        status.update(state="ready")
        if on_ready:
            on_ready(loaded)

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        threading.Thread(target=load, name="hematune-load-release", daemon=True).start()
        yield
        await batcher.stop()

    app = FastAPIOffline(
        title="hematune serve", debug=False, lifespan=lifespan, redoc_url=None,
        description="White-blood-cell image classification with a verified hematune release. "
                    "Research use only: not a diagnostic device.")
    bearer = HTTPBearer(auto_error=False, description="the token the server was started with (--token / "
                                                      "HEMATUNE_TOKEN); needed only when it has one")

    async def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if options.token is None:
            return
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), options.token.encode()):
            raise BadInput(401, "missing or wrong bearer token; send 'Authorization: Bearer <token>' with the "
                                "token the server was started with")

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput):
        return _error(exc.status, exc.message)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady):
        why = status["error"] or "the model is still loading; GET /health says when it is ready"
        return _error(503, why)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _error(400, f"invalid request: {exc.errors()[0].get('msg', 'does not match the API')}")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        print(f"hematune serve: {request.method} {request.url.path} failed: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
        return _error(500, f"internal error ({type(exc).__name__}); the server logged it and keeps serving")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", dependencies=[Depends(require_token)], summary="ready only once the release is verified",
             responses={503: {"description": "loading, or the release failed verification"}})
    async def health():
        if status["state"] != "ready":
            return JSONResponse({"status": status["state"], "error": status["error"]}, status_code=503)
        loaded = champion.loaded()
        return {"status": "ready", "model": loaded.identity(), "follows_champion": champion.follows_pointer,
                "champion_error": champion.reload_error, "model_calls": batcher.batches,
                "images_classified": batcher.images}

    @app.get("/model", dependencies=[Depends(require_token)], summary="labels, image size, metrics, model card")
    async def model():
        described = (await run_in_threadpool(champion.current)).describe()
        return {**described, "limits": options.limits.describe(), "token_required": options.token is not None}

    @app.post("/predict", dependencies=[Depends(require_token)], openapi_extra={"requestBody": _PREDICT_BODY},
              summary="classify one or many images", responses=_ERRORS,
              description="multipart/form-data files, or JSON " + JSON_SHAPE + ". The answer per image: label, "
                          "confidence, probabilities per class, top-3, and the model's name, version and sha256.")
    async def predict(request: Request):
        release = await run_in_threadpool(champion.current)  # fixed for this request, whatever happens next
        uploads = await read_uploads(request, options.limits)
        pixels = await run_in_threadpool(decode_uploads, uploads, release.image_size)
        probs = await batcher.predict(release, pixels)
        return JSONResponse({"model": release.identity(),  # plain JSON types already: no jsonable_encoder pass
                             "predictions": [prediction(u.name, p, release) for u, p in zip(uploads, probs)]})

    return app
