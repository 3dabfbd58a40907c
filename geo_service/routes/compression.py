"""Compressed answers: a pure ASGI middleware, with the codec and level chosen by measurement.

- **Which encoding.** zstd level 1 when the client offers `zstd` (browsers do since 2024; the
  `zstandard` package), otherwise gzip level 1 by ISA-L (the `isal` package; the standard
  library's zlib at level 1 if it is missing). On the 25 MB answer of a 100,000-point batch,
  zstd 1 makes 2.8 MB in ~23 ms and ISA-L gzip 1 makes 4.0 MB in ~22 ms, where zlib makes
  4.3 MB in 85 ms at level 1 and 3.1 MB in 500 ms at level 9 (Starlette's GZipMiddleware, which
  this replaces); higher levels cost 2-5x the time for a few percent (the table, with brotli,
  is in benchmarks/README.md). An encoding the client refuses (`;q=0`) is not used.
- **Which answers.** Whole answers under `minimum_size` (16 KiB) pass untouched: the lookup's
  ~3.5 KB answer, the hottest route, pays only a look at the request headers and the first
  body message. Media types that are compressed already (images, zip, gzip, Parquet, fonts,
  audio, video) and event streams pass too, as do answers with a Content-Encoding or a 206.
- **Streamed answers** (`more_body`) are compressed chunk by chunk, each chunk flushed so that
  the client can decode what has arrived; nothing is buffered beyond the chunk in hand.
  Chunks from 64 KiB up are compressed in a worker thread (both codecs release the GIL), so
  the event loop keeps serving other requests and the compression of one chunk overlaps the
  encoding of the next.
"""

from __future__ import annotations

import zlib

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

try:
    from isal import isal_zlib as deflate  # ISA-L: 4x zlib's speed at level 1, and smaller
except ImportError:  # pragma: no cover - a declared dependency; the standard library otherwise
    deflate = zlib
try:
    import zstandard
except ImportError:  # pragma: no cover - a declared dependency; then only gzip is offered
    zstandard = None

GZIP_LEVEL = 1
ZSTD_LEVEL = 1
MINIMUM_SIZE = 16_384
THREAD_SIZE = 65_536
# Media types (prefixes) not worth compressing: compressed already, or streamed events.
UNCOMPRESSED_TYPES = (b"image/png", b"image/jpeg", b"image/gif", b"image/webp", b"image/avif", b"audio/",
                      b"video/", b"font/woff", b"application/zip", b"application/gzip", b"application/x-gzip",
                      b"application/zstd", b"application/vnd.apache.parquet", b"application/grpc",
                      b"text/event-stream")


class Gzip:
    name = b"gzip"

    def __init__(self) -> None:
        self._z = deflate.compressobj(GZIP_LEVEL, deflate.DEFLATED, 31)  # 31: gzip header and trailer

    def part(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush(deflate.Z_SYNC_FLUSH)

    def last(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush()


class Zstd:
    name = b"zstd"

    def __init__(self) -> None:
        self._z = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()

    def part(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def last(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush()


# Ours in order of preference: at equal quality values the first the client accepts is used.
CODECS = {b"zstd": Zstd, b"gzip": Gzip} if zstandard is not None else {b"gzip": Gzip}
_chosen: dict[bytes, type | None] = {}  # Accept-Encoding value -> codec; clients send few distinct values


def choose(accept_encoding: bytes) -> type | None:
    """The codec for an Accept-Encoding header (RFC 9110 §12.5.3), None for no compression."""
    codec = _chosen.get(accept_encoding, False)
    if codec is not False:
        return codec
    quality: dict[bytes, float] = {}
    for item in accept_encoding.lower().split(b","):
        name, *parameters = item.split(b";")
        name, q = name.strip(), 1.0
        for parameter in parameters:
            key, _, value = parameter.partition(b"=")
            if key.strip() == b"q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        quality[b"gzip" if name == b"x-gzip" else name] = q
    wildcard = quality.get(b"*", 0.0)
    ranked = [(quality.get(name, wildcard), -order, codec) for order, (name, codec) in enumerate(CODECS.items())]
    best = max(ranked, key=lambda item: item[:2])
    codec = best[2] if best[0] > 0 else None
    if len(_chosen) < 256:
        _chosen[accept_encoding] = codec
    return codec


class Compression:
    """Compress large and streamed answers for clients that accept zstd or gzip."""

    def __init__(self, app: ASGIApp, minimum_size: int = MINIMUM_SIZE, thread_size: int = THREAD_SIZE):
        self.app = app
        self.minimum_size = minimum_size
        self.thread_size = thread_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"accept-encoding":
                    codec = choose(value)
                    if codec is not None:
                        return await self.app(scope, receive, _Responder(send, codec, self).send)
                    break
        return await self.app(scope, receive, send)


class _Responder:
    """One answer: the start message is held until the first body says whether to compress."""

    def __init__(self, send: Send, codec: type, settings: Compression):
        self._send = send
        self._codec = codec
        self._settings = settings
        self._start: Message | None = None
        self._compressor = None
        self._passing = False

    async def send(self, message: Message) -> None:
        if self._passing:
            return await self._send(message)
        kind = message["type"]
        if kind == "http.response.start":
            if _leave_alone(message):
                self._passing = True
                return await self._send(message)
            self._start = message
            return None
        if kind != "http.response.body":  # e.g. pathsend: sent as it is
            self._passing = True
            if self._start is not None:
                await self._send(self._start)
            return await self._send(message)
        body, more = message.get("body", b""), message.get("more_body", False)
        if self._compressor is None:  # the first body
            if not more and len(body) < self._settings.minimum_size:
                self._passing = True
                await self._send(self._start)
                return await self._send(message)
            self._compressor = self._codec()
            data = await self._compress(body, more)
            headers = [(k, v) for k, v in self._start.get("headers", ()) if k != b"content-length"]
            headers.append((b"content-encoding", self._codec.name))
            headers.append((b"vary", b"Accept-Encoding"))
            if not more:
                headers.append((b"content-length", b"%d" % len(data)))
            await self._send({**self._start, "headers": headers})
            return await self._send({"type": "http.response.body", "body": data, "more_body": more})
        data = await self._compress(body, more)
        return await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def _compress(self, body: bytes, more: bool) -> bytes:
        work = self._compressor.part if more else self._compressor.last
        if len(body) >= self._settings.thread_size:
            return await anyio.to_thread.run_sync(work, body)
        return work(body)


def _leave_alone(start: Message) -> bool:
    """Whether an answer goes out as it is, whatever its size."""
    if start.get("status") in (204, 206, 304):
        return True
    for name, value in start.get("headers", ()):
        if name == b"content-encoding":
            return True
        if name == b"content-type" and value.lower().startswith(UNCOMPRESSED_TYPES):
            return True
    return False
