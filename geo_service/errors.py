"""Domain errors. Domain modules raise these; `app.py` maps them to HTTP in one place."""

from __future__ import annotations

from dataclasses import dataclass, field


class GeoServiceError(Exception):
    """Base class: `str(error)` is a message fit for the user, quoting the bad value."""

    def __init__(self, message: str, **extra):
        super().__init__(message)
        self.message = message
        self.extra = extra


class DatabaseSetupError(GeoServiceError):
    """The database cannot be created, started or reached as configured."""


class InvalidInput(GeoServiceError):
    """A value from the user is malformed or out of range."""


class NotFound(GeoServiceError):
    """The named object does not exist."""


class Conflict(GeoServiceError):
    """The request conflicts with the current state."""


class OutsideCoverage(NotFound):
    """No grid covers the point; `extra["nearest_grid"]` says which grid is closest and how far."""


class PayloadTooLarge(GeoServiceError):
    """A request carries more than the service accepts at once."""


class UnsupportedMediaType(GeoServiceError):
    """A file of a type the route does not take (a photo that is not JPEG, PNG or WebP)."""


class Unauthenticated(GeoServiceError):
    """No valid credentials: missing, wrong, expired or revoked."""


class Forbidden(GeoServiceError):
    """Valid credentials whose role may not do this."""


class TooManyAttempts(GeoServiceError):
    """Too many failed sign-ins; `extra["retry_after"]` says when to try again (seconds)."""


class DatabaseUnavailable(GeoServiceError):
    """The database cannot be reached right now; retrying later may succeed."""


@dataclass
class Problem:
    """One thing wrong with a dataset, precise enough to find and fix it."""

    layer: str
    kind: str
    message: str
    code: str | None = None
    lon: float | None = None
    lat: float | None = None
    area_m2: float | None = None
    # The other areas involved (the neighbour of an overlap, the parent of a gap), for the problem report.
    related_codes: tuple[str, ...] = ()
    # The piece itself (a sliver or gap polygon) in lon/lat, for the problem report; None when only a point is known.
    geometry: object = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        text = f"[{self.layer}] {self.kind}"
        if self.code is not None:
            text += f" {self.code}"
        text += f": {self.message}"
        if self.area_m2 is not None:
            text += f"; area {self.area_m2:,.1f} m²"
        if self.lon is not None and self.lat is not None:
            text += f"; at lon {self.lon:.6f}, lat {self.lat:.6f}"
        return text


@dataclass
class DatasetInvalid(GeoServiceError):
    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self):
        super().__init__(f"dataset refused: {len(self.problems)} problem(s); nothing was loaded")
