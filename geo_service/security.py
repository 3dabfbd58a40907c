"""Security rules that are not about who may call what (that is routes/access.py).

- `SecurityHeaders`: the response headers every answer carries, with a Content-Security-Policy
  that lets an HTML page run only scripts from this site or inline scripts bearing the page's
  nonce (`page_nonce`, `add_nonce`).
- `local_path`: where the login page may send a user afterwards (no open redirect).
- Credentials never travel in URLs: `credential_in_query` finds them (routes/access.py refuses
  such requests), `RedactCredentials` keeps any that are sent anyway out of the access log.
"""

from __future__ import annotations

import logging
import re
import secrets
from urllib.parse import unquote, unquote_plus, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from geo_service.config import Settings

# Query parameter names that carry secrets, compared after percent-decoding and lower-casing.
CREDENTIAL_PARAMS = frozenset({"api_key", "apikey", "key", "token", "access_token", "password", "secret"})
REDACTED = "[redacted]"

# --------------------------------------------------------------------------- response headers

NONCE_STATE = "csp_nonce"  # the request.state attribute a page handler sets for its inline scripts
# JSON, files and everything else that is not a page: nothing in it may run or be framed.
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
# Scripts: a service worker (the phone report page's) runs under its script's own policy, and must
# reach this origin (fetch, importScripts); for a script a page loads, the page's policy rules.
SCRIPT_POLICY = "default-src 'self'; frame-ancestors 'none'"


def page_nonce(request) -> str:
    """A fresh nonce for this response's inline scripts; SecurityHeaders names it in the policy."""
    nonce = secrets.token_urlsafe(18)
    setattr(request.state, NONCE_STATE, nonce)
    return nonce


_SCRIPT_TAG = re.compile(r"<script(?=[\s>])", re.IGNORECASE)


def add_nonce(page: str, nonce: str) -> str:
    """`page` with the nonce on every <script> tag (inline ones run only with it)."""
    return _SCRIPT_TAG.sub(f'<script nonce="{nonce}"', page)


def tile_source(tile_url: str | None) -> str | None:
    """The CSP source expression admitting the basemap tiles, or None when they come from this site.

    Template placeholders in the host (`{s}.tile.openstreetmap.org`, `t{s}.tianditu.gov.cn`)
    become a `*.` wildcard, which CSP allows only as the leftmost label; any other templated host
    falls back to admitting the scheme.
    """
    if not tile_url:
        return None
    parts = urlsplit(tile_url)
    if not parts.scheme or not parts.netloc:
        return None  # a path on this site, e.g. /static/tiles/{z}/{x}/{y}.png
    host = parts.netloc.rsplit("@", 1)[-1]
    labels = host.split(".")
    if "{" in labels[0]:
        labels[0] = "*"
    if any("{" in label for label in labels):
        return f"{parts.scheme}:"
    return f"{parts.scheme}://{'.'.join(labels)}"


def page_policy(settings: Settings, nonce: str | None) -> str:
    """The Content-Security-Policy of an HTML page. Styles may be inline (Folium and Leaflet set
    them everywhere); scripts only from this site or with the nonce. blob: and data: images are
    the density overlay and Leaflet's and Swagger's icons."""
    scripts = f"'self' 'nonce-{nonce}'" if nonce else "'self'"
    tiles = tile_source(settings.tile_url)
    images = "'self' data: blob:" + (f" {tiles}" if tiles else "")
    return ("default-src 'self'; "
            f"script-src {scripts}; "
            "style-src 'self' 'unsafe-inline'; "
            f"img-src {images}; "
            "font-src 'self' data:; "
            "connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class SecurityHeaders:
    """Pure ASGI middleware adding the security headers to every response.

    The headers are computed once; per response it only looks at the content type (an HTML page
    gets the page policy with its nonce, everything else the constant API policy), so the JSON
    API pays a few list operations. On a page a header the handler set itself is left alone.
    """

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings
        common = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                  (b"x-frame-options", b"DENY")]
        if settings.secure_cookies:  # served over HTTPS: browsers must never fall back to http
            common.append((b"strict-transport-security", b"max-age=31536000; includeSubDomains"))
        self.common = common
        self.api_headers = [*common, (b"content-security-policy", API_POLICY.encode())]
        self.script_headers = [*common, (b"content-security-policy", SCRIPT_POLICY.encode())]
        self.page_without_scripts = page_policy(settings, None).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # shared with request.state, where pages put their nonce

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers") or ()
                content_type = b""
                for name, value in headers:  # Starlette sends header names in lower case
                    if name == b"content-type":
                        content_type = value
                        break
                if content_type.startswith(b"text/html"):
                    nonce = state.get(NONCE_STATE)
                    policy = page_policy(self.settings, nonce).encode() if nonce else self.page_without_scripts
                    present = {name for name, _ in headers}
                    extra = [(name, value) for name, value in (*self.common, (b"content-security-policy", policy))
                             if name not in present]
                elif content_type.startswith((b"text/javascript", b"application/javascript")):
                    extra = self.script_headers
                else:
                    extra = self.api_headers  # the hot path: no handler of the API sets these itself
                message = {**message, "headers": [*headers, *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --------------------------------------------------------------------------- redirects

_CONTROL_OR_BACKSLASH = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def local_path(target: str) -> bool:
    """Whether `target` is a plain path on this site, at every level of percent-decoding.

    Browsers read `//host`, `/\\host` and `\\\\host` as other sites and drop tabs and newlines
    from URLs, and some servers and proxies decode `%2F` or `%5C` once more: so every decoding
    of the target must start with one slash, carry no backslash or control character and have
    no scheme or host.
    """
    if len(target) > 2000:
        return False
    for _ in range(8):
        if _CONTROL_OR_BACKSLASH.search(target) or not target.startswith("/") or target.startswith("//"):
            return False
        parts = urlsplit(target)
        if parts.scheme or parts.netloc:
            return False
        decoded = unquote(target)
        if decoded == target:
            return True
        target = decoded
    return False  # still decoding after eight rounds: nobody needs that


# --------------------------------------------------------------------------- credentials in URLs

_CREDENTIAL_WORDS = ("key", "token", "password", "secret")


def credential_in_query(query_string: bytes | str) -> str | None:
    """The name of the first credential-like parameter in a query string, or None."""
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    if "%" not in query_string and "+" not in query_string:
        # Nothing encoded: a name can only match if one of the words is there as written. This
        # skips the parsing on the lookup's `lon=..&lat=..`, the hottest query string.
        lowered = query_string.lower()
        if not any(word in lowered for word in _CREDENTIAL_WORDS):
            return None
    for piece in query_string.split("&"):
        name = unquote_plus(piece.split("=", 1)[0]).strip().lower()
        if name in CREDENTIAL_PARAMS:
            return name
    return None


def redact_query(path: str) -> str:
    """`path` with the values of credential-like query parameters replaced by [redacted]."""
    base, mark, query = path.partition("?")
    if not mark or credential_in_query(query) is None:
        return path
    pieces = []
    for piece in query.split("&"):
        name = piece.split("=", 1)[0]
        pieces.append(f"{name}={REDACTED}" if unquote_plus(name).strip().lower() in CREDENTIAL_PARAMS else piece)
    return f"{base}?{'&'.join(pieces)}"


class RedactCredentials(logging.Filter):
    """Access-log filter: a key sent in a query string is refused, but uvicorn logs the request
    line first; this keeps the secret out of the log. uvicorn's access record carries
    (client, method, path with query, http version, status) as its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def uvicorn_log_config() -> dict:
    """uvicorn's own logging configuration with RedactCredentials on the access log."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_credentials"] = {"()": "geo_service.security.RedactCredentials"}
    config["handlers"]["access"].setdefault("filters", []).append("redact_credentials")
    return config
