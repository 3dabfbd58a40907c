"""Bounded input at the door, before authentication and before any parsing.

`RequestGuard` is the outermost layer of the application (pure ASGI, a few microseconds a
request): a body longer than its route's limit is refused with 413 (by `Content-Length` before
reading anything, otherwise as soon as the stream passes the limit), multipart and form bodies
included; a NUL character in the path, the query string, a form or a JSON body is refused with
422 naming the parameter, since PostgreSQL text cannot hold it. Bodies within the limit are
read once here and handed on unchanged.

`validation_error` is the one handler for FastAPI's request validation: a 422 whose message names
the parameter and quotes the value, without ever decoding a raw (possibly binary) body.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


async def _answer(send, status: int, detail: str, **extra) -> None:
    body = orjson.dumps({"detail": detail, **extra})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 413:
        headers.append((b"connection", b"close"))  # the rest of an oversized body is not read
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _nul_in_query(raw: bytes) -> str | None:
    """The name of the first query parameter holding a NUL character, if any."""
    if b"%00" not in raw and b"\x00" not in raw:
        return None
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "\\x00")
    return "(query string)"


def _nul_in_body(body: bytes, content_type: bytes) -> str | None:
    """Where a form or JSON body carries a NUL character, if it does."""
    kind = content_type.split(b";")[0].strip().lower()
    if kind == b"application/x-www-form-urlencoded":
        name = _nul_in_query(body)
        return None if name is None else f"form field {name!r}"
    if kind in (b"application/json", b"application/geo+json") and b"\\u0000" in body:
        return "the JSON body"
    return None


class RequestGuard:
    def __init__(self, app, default_limit: int, limits: dict[str, int] | None = None,
                 uploads: tuple[re.Pattern, int] | None = None):
        self.app = app
        self.default_limit = default_limit
        self.limits = limits or {}
        self.uploads = uploads  # (paths, limit) for multipart/form-data bodies: photos

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if "\x00" in scope["path"]:
            return await _answer(send, 422, "the path contains a NUL character")
        name = _nul_in_query(scope["query_string"])
        if name is not None:
            return await _answer(send, 422, f"query parameter {name!r} contains a NUL character")
        if scope["method"] in BODYLESS and not any(name in (b"content-length", b"transfer-encoding")
                                                   for name, _ in scope["headers"]):
            return await self.app(scope, receive, send)  # no body to read: the common GET
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        limit = self.limits.get(scope["path"], self.default_limit)
        if (self.uploads and headers.get(b"content-type", b"").startswith(b"multipart/form-data")
                and self.uploads[0].fullmatch(scope["path"])):
            limit = self.uploads[1]
        if length is not None:
            if not length.isdigit():
                return await _answer(send, 400, f"Content-Length {length.decode('latin-1')!r} is not a number")
            if int(length) > limit:
                return await _answer(send, 413, f"request body of {int(length):,} bytes is over the {limit:,} "
                                                 f"bytes accepted by {scope['path']}", limit_bytes=limit)
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                return await _answer(send, 413, f"request body over the {limit:,} bytes accepted by "
                                                 f"{scope['path']}", limit_bytes=limit)
            more = message.get("more_body", False)
        where = _nul_in_body(bytes(body), headers.get(b"content-type", b""))
        if where is not None:
            return await _answer(send, 422, f"{where} contains a NUL character")
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body only a disconnect can come

        return await self.app(scope, replay, send)


def _describe(error: dict) -> str:
    location = [str(part) for part in error.get("loc", ())]
    where = {"query": "query parameter", "path": "path parameter", "header": "header",
             "body": "body field", "cookie": "cookie"}.get(location[0] if location else "", "")
    name = ".".join(location[1:]) if where else ".".join(location)
    if where == "body field" and not name:
        where, name = "body", ""
    text = f"{where} {name!r}".strip() if name else where or "request"
    value = error.get("input")
    shown = ""
    if value is not None and not isinstance(value, (bytes, bytearray, dict, list)):
        quoted = repr(value)
        shown = f" (got {quoted[:80]}{'…' if len(quoted) > 80 else ''})"
    return f"{text}: {error.get('msg', 'invalid')}{shown}"


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad parameter and its value (raw bodies are never echoed)."""
    errors = exc.errors()
    details = [_describe(e) for e in errors]
    if any(tuple(e.get("loc", ())) == ("body",) for e in errors):
        sent = request.headers.get("content-type", "no Content-Type").split(";")[0]
        details.insert(0, f"the body must be a JSON object (Content-Type: application/json); got {sent}")
    return JSONResponse({"detail": "; ".join(details[:5]) or "invalid request",
                         "errors": [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")}
                                    for e in errors[:20]]}, status_code=422)
