"""A ``POST /predict`` body → named image bytes, within the upload limits, or one-line errors.

Two forms are accepted: ``multipart/form-data`` with one or more file parts
(what a browser form and ``curl -F file=@cell.jpeg`` send) and
``application/json`` with ``{"image": "<base64>"}`` or ``{"images": [...]}``
(what the older lab scripts send). Anything else is refused with the status a
client can act on: 415 for another content type, 400 for a malformed body,
413 over a limit.

Why it is written this way:

* **Nothing lands on disk.** Parts are read into memory as they stream in
  (python-multipart's incremental parser); the client's file name is only a
  label echoed in the answer and in error lines — never a path.
* **Limits hold while reading.** The body is counted as it arrives, so an
  over-limit request is cut off at the limit instead of being received whole;
  a file over its limit stops being kept at once (the rest of its bytes are
  read and dropped, so the client still gets the 413 rather than a reset).
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from data_pipeline.errors import first_line

MB = 1024 * 1024
JSON_SHAPE = 'send {"image": "<base64>"} or {"images": ["<base64>", …]}'
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


class BadInput(Exception):
    """A request the server refuses: an HTTP status and one line naming the file and the reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 20 * MB
    max_files: int = 64
    max_request_bytes: int = 100 * MB  # the whole body, any form (JSON is held in memory to parse it)

    def describe(self) -> dict:
        return {"max_file_mb": self.max_file_bytes / MB, "max_files": self.max_files,
                "max_request_mb": self.max_request_bytes / MB}


@dataclass(frozen=True)
class Upload:
    name: str  # for display only: the client's file name (last path part, sanitised) or "images[i]"
    data: bytes


def display_name(raw: str, fallback: str) -> str:
    """The last path component of a client's file name, without control characters, at most 120 characters."""
    name = _UNSAFE.sub("", re.split(r"[\\/]", raw)[-1]).strip()[:120]
    return name or fallback


async def _chunks(request, limits: Limits):
    """The body as it arrives, stopped with 413 once it passes the request limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise BadInput(413, f"request body of {int(declared) / MB:.1f} MB is over the "
                            f"{limits.max_request_bytes / MB:g} MB request limit (--max-request-mb)")
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limits.max_request_bytes:
            raise BadInput(413, f"request body is over the {limits.max_request_bytes / MB:g} MB request limit "
                                "(--max-request-mb)")
        yield chunk


def _too_big(name: str, limits: Limits) -> str:
    return f"{name}: larger than the {limits.max_file_bytes / MB:g} MB upload limit per file (--max-file-mb)"


def _too_many(limits: Limits) -> str:
    return f"more than {limits.max_files} files in one request (--max-files); send them in several requests"


async def read_multipart(request, limits: Limits) -> list[Upload]:
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadInput(400, "multipart/form-data without a boundary; let the client library build the body")
    uploads: list[Upload] = []
    problems: list[tuple[int, str]] = []
    part: dict = {}

    def on_part_begin():
        part.clear()
        part.update(headers={}, field=b"", value=b"", data=bytearray(), dropped=False)

    def on_header_field(data, start, end):
        part["field"] += data[start:end]

    def on_header_value(data, start, end):
        part["value"] += data[start:end]

    def on_header_end():
        part["headers"][part["field"].lower()] = part["value"]
        part["field"], part["value"] = b"", b""

    def on_part_data(data, start, end):
        if part["dropped"]:
            return
        if len(part["data"]) + (end - start) > limits.max_file_bytes:
            part["dropped"], part["data"] = True, bytearray()  # read on, keep nothing
            return
        part["data"] += data[start:end]

    def on_part_end():
        _, options = parse_options_header(part["headers"].get(b"content-disposition", b""))
        field = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            problems.append((400, f"form field {display_name(field, '(unnamed)')!r} is not a file; send each "
                                  "image as a file part, e.g. curl -F file=@cell.jpeg"))
            return
        name = display_name(options[b"filename"].decode("utf-8", "replace"), f"file[{len(uploads)}]")
        if part["dropped"]:
            problems.append((413, _too_big(name, limits)))
        elif len(uploads) >= limits.max_files:
            problems.append((413, _too_many(limits)))
        else:
            uploads.append(Upload(name, bytes(part["data"])))
        part["data"] = bytearray()

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        async for chunk in _chunks(request, limits):
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadInput(400, f"not a valid multipart/form-data body ({first_line(exc, 120)})") from None
    if problems:
        status = max(s for s, _ in problems)  # 413 wins: a limit is what the client must change first
        raise BadInput(status, join_problems(dict.fromkeys(m for _, m in problems)))
    if not uploads:
        raise BadInput(400, "no image in the request; send one or more files as multipart/form-data "
                            "(curl -F file=@cell.jpeg) or JSON " + JSON_SHAPE)
    return uploads


def _b64(text, name: str) -> bytes:
    if not isinstance(text, str):
        raise BadInput(400, f"{name}: expected a base64 string, got {type(text).__name__}; {JSON_SHAPE}")
    if text.startswith("data:") and "," in text[:200]:
        text = text.split(",", 1)[1]  # a data URL, as a browser's FileReader makes
    try:
        data = base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInput(400, f"{name}: not valid base64 ({exc})") from None
    return data


async def read_json(request, limits: Limits) -> list[Upload]:
    body = bytearray()
    async for chunk in _chunks(request, limits):
        body += chunk
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(400, f"request body is not valid JSON ({first_line(exc, 120)})") from None
    if isinstance(payload, dict) and set(payload) == {"image"}:
        named = [("image", payload["image"])]
    elif isinstance(payload, dict) and set(payload) == {"images"} and isinstance(payload["images"], list):
        named = [(f"images[{i}]", item) for i, item in enumerate(payload["images"])]
    else:
        got = f"an object with keys {sorted(payload)[:5]}" if isinstance(payload, dict) else type(payload).__name__
        raise BadInput(400, f"wrong JSON shape: {JSON_SHAPE}; got {got}")
    if not named:
        raise BadInput(400, f"no image in the request: \"images\" is empty; {JSON_SHAPE}")
    if len(named) > limits.max_files:
        raise BadInput(413, _too_many(limits))
    uploads = [Upload(name, _b64(text, name)) for name, text in named]
    too_big = [u.name for u in uploads if len(u.data) > limits.max_file_bytes]
    if too_big:
        raise BadInput(413, join_problems([_too_big(name, limits) for name in too_big]))
    return uploads


async def read_uploads(request, limits: Limits) -> list[Upload]:
    """The images of a ``POST /predict`` request, by content type."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return await read_multipart(request, limits)
    if media == "application/json":
        return await read_json(request, limits)
    raise BadInput(415, f"content type {media or '(none)'!r} is not accepted; use multipart/form-data files "
                        f"or application/json: {JSON_SHAPE}")


def join_problems(lines, at_most: int = 5) -> str:
    """Several problems on one line: the first few, then how many more."""
    lines = list(lines)
    text = "; ".join(lines[:at_most])
    return text + (f"; and {len(lines) - at_most} more" if len(lines) > at_most else "")
