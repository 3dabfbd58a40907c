"""Photos of incidents: verified, cleaned, stored content-addressed outside the database.

A photo is accepted when Pillow decodes it completely as JPEG, PNG or WebP (the bytes decide,
never the file name or the declared type), at most `GEO_PHOTO_MAX_BYTES` (413 beyond) and
`GEO_PHOTOS_PER_REQUEST` at once. It is then re-encoded from its pixels, turned upright by its
EXIF orientation first, so that no metadata block survives: EXIF (a phone's GPS tag would tell
where the reporter lives), XMP, IPTC, comments, ICC profiles, PNG text chunks. A thumbnail of at
most THUMB_SIDE pixels is made as a JPEG.

Files live under `GEO_MEDIA_DIR` (default `var/media`) at `ab/cd/<sha256>`, the SHA-256 of the
stored bytes: the same photo twice is one file, and a file is never changed once written
(written to a temporary name, then renamed). The database holds a row per attachment
(`incident_attachment`); a file is written before its row commits, so a report that rolls back
can leave a file no row names, as can a deleted incident (its rows go with it, by cascade).
`collect_garbage()` removes such files once they are older than a grace period, so an upload
whose row has not yet committed is never taken; `geo-service media gc` runs it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import audit
from geo_service.config import Settings
from geo_service.errors import InvalidInput, NotFound, PayloadTooLarge, UnsupportedMediaType

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
THUMB_SIDE = 320
MAX_PIXELS = 60_000_000  # a 10 MB file may still unpack into gigabytes: refuse beyond this
GRACE = dt.timedelta(hours=1)


@dataclass(frozen=True)
class Photo:
    """A cleaned photo, ready to store: its bytes and its thumbnail's."""

    filename: str | None
    content_type: str
    data: bytes
    width: int
    height: int
    thumb: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def thumb_sha256(self) -> str:
        return hashlib.sha256(self.thumb).hexdigest()


def check_count(count: int, settings: Settings) -> None:
    if count > settings.photos_per_request:
        raise InvalidInput(f"{count} photos sent; at most {settings.photos_per_request} per request")


def clean(data: bytes, filename: str | None, settings: Settings) -> Photo:
    """Verify a photo by decoding it and re-encode it without any metadata (see the module)."""
    name, kind = repr(filename or "photo"), None
    if len(data) > settings.photo_max_bytes:
        raise PayloadTooLarge(f"photo {name} is {len(data):,} bytes; at most {settings.photo_max_bytes:,} are accepted",
                              limit_bytes=settings.photo_max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            kind = image.format
            if kind not in FORMATS:
                raise UnsupportedMediaType(f"photo {name} is {kind or 'not an image'}; send JPEG, PNG or WebP")
            if image.width * image.height > MAX_PIXELS:
                raise InvalidInput(f"photo {name} is {image.width} x {image.height} pixels; at most "
                                   f"{MAX_PIXELS:,} pixels are accepted")
            image.load()  # decodes every pixel: a truncated or corrupt file fails here
    except UnidentifiedImageError:
        raise UnsupportedMediaType(f"photo {name} is not a JPEG, PNG or WebP image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"photo {name} could not be decoded as {FORMATS.get(kind, 'an image')}: {exc}") from None
    upright = ImageOps.exif_transpose(image)
    pixels = Image.frombytes(upright.mode, upright.size, upright.tobytes())  # the pixels, nothing else
    if upright.mode == "P" and upright.getpalette():
        pixels.putpalette(upright.getpalette())
    stored = _encode(pixels, kind)
    thumb = pixels.convert("RGBA" if "A" in pixels.getbands() or pixels.mode == "P" else "RGB")
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
    if thumb.mode == "RGBA":  # JPEG has no transparency: on white
        flat = Image.new("RGB", thumb.size, "white")
        flat.paste(thumb, mask=thumb.getchannel("A"))
        thumb = flat
    return Photo(filename=(filename or None) and filename[:200], content_type=FORMATS[kind], data=stored,
                 width=pixels.width, height=pixels.height, thumb=_encode(thumb, "JPEG"))


def _encode(image: Image.Image, kind: str) -> bytes:
    out = io.BytesIO()
    if kind == "JPEG":
        if image.mode not in ("RGB", "L", "CMYK"):
            image = image.convert("RGB")
        image.save(out, "JPEG", quality=88, optimize=True)
    elif kind == "PNG":
        image.save(out, "PNG", optimize=False)
    else:
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        image.save(out, "WEBP", quality=88)
    return out.getvalue()


# --------------------------------------------------------------------------- files

def path_of(settings: Settings, sha256: str) -> Path:
    return settings.media_path / sha256[:2] / sha256[2:4] / sha256


def write(settings: Settings, photo: Photo) -> None:
    """Store the photo and its thumbnail (idempotent: an existing file is the same bytes)."""
    for digest, data in ((photo.sha256, photo.data), (photo.thumb_sha256, photo.thumb)):
        target = path_of(settings, digest)
        if target.exists():
            os.utime(target)  # fresh again: the garbage collection's grace starts over
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{digest}.{os.getpid()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, target)


# --------------------------------------------------------------------------- rows

INSERT_SQL = text("""
INSERT INTO incident_attachment (incident_id, purpose, sha256, content_type, bytes, width, height, thumb_sha256,
                                 thumb_bytes, filename, added_at, added_by_kind, added_by_id, added_by_name)
VALUES (:incident_id, :purpose, :sha256, :content_type, :bytes, :width, :height, :thumb_sha256, :thumb_bytes,
        :filename, :now, :actor_kind, :actor_id, :actor_name)
""")


def attach(session: Session, settings: Settings, incident_id: int, photos: list[Photo], purpose: str,
           actor: audit.Actor, now: dt.datetime) -> None:
    """Write the files and the rows of photos of an incident, in the caller's transaction."""
    for photo in photos:
        write(settings, photo)
    if photos:
        session.execute(INSERT_SQL, [{
            "incident_id": incident_id, "purpose": purpose, "sha256": p.sha256, "content_type": p.content_type,
            "bytes": len(p.data), "width": p.width, "height": p.height, "thumb_sha256": p.thumb_sha256,
            "thumb_bytes": len(p.thumb), "filename": p.filename, "now": now, "actor_kind": actor.kind,
            "actor_id": actor.id, "actor_name": actor.name} for p in photos])


LIST_SQL = text("""
SELECT id, purpose, content_type, bytes, width, height, filename, added_at, added_by_name
FROM incident_attachment WHERE incident_id = :id ORDER BY id
""")


def listed(session: Session, incident_id: int) -> list[dict]:
    """An incident's attachments as the API lists them (the caller has seen the incident)."""
    return [{**row, "added_at": row["added_at"].isoformat(), "url": f"/api/v1/attachments/{row['id']}",
             "thumb_url": f"/api/v1/attachments/{row['id']}?size=thumb"}
            for row in session.execute(LIST_SQL, {"id": incident_id}).mappings()]


FIRST_SQL = text("""
SELECT DISTINCT ON (incident_id) incident_id, id FROM incident_attachment
WHERE incident_id = ANY(:ids) ORDER BY incident_id, id
""")


def first_of(session: Session, incident_ids: list[int]) -> dict[int, int]:
    """The first attachment of each of these incidents that has one (the caller has seen them)."""
    if not incident_ids:
        return {}
    return dict(session.execute(FIRST_SQL, {"ids": list(incident_ids)}).all())


def open_for(session: Session, settings: Settings, attachment_id: int, thumb: bool, visible_sql: str,
             params: dict) -> tuple[Path, str, str]:
    """The file of an attachment the caller may see (the incidents rule, `visible_sql` over
    `incident AS i`): (path, content type, SHA-256, for the ETag). NotFound otherwise."""
    row = session.execute(text(f"""
        SELECT a.sha256, a.thumb_sha256, a.content_type FROM incident_attachment AS a
        JOIN incident AS i ON i.id = a.incident_id WHERE a.id = :id AND {visible_sql}"""),
        {"id": attachment_id, **params}).one_or_none()
    if row is None:
        raise NotFound(f"attachment {attachment_id} does not exist or is not yours to see")
    digest, content_type = (row.thumb_sha256, "image/jpeg") if thumb else (row.sha256, row.content_type)
    path = path_of(settings, digest)
    if not path.exists():
        raise NotFound(f"the file of attachment {attachment_id} is missing from the media store")
    return path, content_type, digest


# --------------------------------------------------------------------------- garbage

NAMED_SQL = text("SELECT sha256 FROM incident_attachment UNION SELECT thumb_sha256 FROM incident_attachment")


def collect_garbage(session: Session, settings: Settings, grace: dt.timedelta = GRACE) -> list[str]:
    """Delete the stored files no attachment names, older than `grace`; their names."""
    root = settings.media_path
    if not root.exists():
        return []
    named = set(session.execute(NAMED_SQL).scalars())
    cutoff = time.time() - grace.total_seconds()
    removed = []
    for path in root.glob("??/??/*"):
        if path.name not in named and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed
