"""What every router shares: answers serialised once with orjson, and comma lists and bounding
boxes read from query parameters (with 422 errors naming the bad value)."""

from __future__ import annotations

import orjson
from fastapi import Response

from geo_service.errors import InvalidInput

JSON = "application/json"
GEOJSON = "application/geo+json"


def json_response(content, media_type: str = JSON) -> Response:
    # Answers are built as plain dicts; serialising them directly skips a second validation
    # pass through the response model (which stays for the documentation).
    return Response(orjson.dumps(content), media_type=media_type)


def comma_list(value: str | None) -> list[str] | None:
    """`a,b, c` as ['a', 'b', 'c']; None when empty."""
    return [v.strip() for v in value.split(",") if v.strip()] or None if value else None


def bbox(value: str | None) -> tuple[float, float, float, float] | None:
    """`west,south,east,north` in degrees."""
    if not value:
        return None
    try:
        west, south, east, north = (float(v) for v in value.split(","))
    except ValueError:
        raise InvalidInput(f"bbox {value!r} is not four numbers west,south,east,north") from None
    return west, south, east, north
