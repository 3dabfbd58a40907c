"""The one settings class. Every value can be set by a `GEO_`-prefixed environment variable."""

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _default_data_dir() -> Path:
    # In a checkout (editable install) the embedded cluster lives beside the code in var/;
    # an installed copy keeps it in the user's data directory instead of site-packages.
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return PROJECT_ROOT / "var"
    return Path.home() / ".local" / "share" / "geo_service"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GEO_", env_file=".env", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of an existing PostGIS database. "
        "Unset: the embedded cluster under data_dir is used.",
    )
    database_owner_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the role that owns the schema: migrations and the admin CLI "
        "connect as it. Unset: GEO_DATABASE_URL (then the service runs as the owner; `serve` warns).",
    )
    data_dir: Path = Field(default_factory=_default_data_dir)
    db_name: str = "geo_service"
    # The embedded cluster's three roles: the bootstrap superuser administers the cluster
    # (databases, roles, the postgis extension), the owner runs migrations and the admin CLI,
    # and the service role, which owns nothing, is what `geo-service serve` connects as.
    db_user: str = "geo_service"
    db_owner_user: str = "geo_owner"
    db_service_user: str = "geo_app"
    pg_os_user: str = Field(
        default="postgres",
        description="Unprivileged OS user that owns and runs the embedded cluster when started as root.",
    )
    pool_size: int = 10
    max_overflow: int = 10
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int | Literal["auto"] = Field(
        default="auto", description="Worker processes of `geo-service serve`: `auto` is one per CPU core.")
    access_log: bool = Field(default=False, description="Write an access-log line per request (credentials in "
                             "query strings redacted). Off by default: it costs the hot path a log record each.")
    metric_crs: str = Field(
        default="EPSG:4547",
        description="Projected CRS for lengths and areas (CGCS2000 / 3-degree Gauss-Kruger CM 114E).",
    )
    batch_max_points: int = Field(default=100_000, description="Most points one batch lookup accepts.")
    batch_max_bytes: int = Field(default=64 * 1024 * 1024, description="Largest batch request body.")
    max_body_bytes: int = Field(default=1024 * 1024, description="Largest request body of every other route "
                                "(413 beyond, checked before authentication and parsing).")
    token_minutes: int = Field(default=30, description="Lifetime of a bearer token from /api/v1/auth/token.")
    session_hours: int = Field(default=8, description="Lifetime of a page session (login cookie).")
    identity_cache_seconds: float = Field(
        default=5.0, description="How long a verified token or key is trusted without asking the database; "
        "for as long again it is re-checked in the background, so revocation takes effect within twice this.")
    audit_lookups: bool = Field(default=True, description="Audit lookups that return personal data.")
    secure_cookies: bool = Field(default=False, description="Mark session cookies Secure and send HSTS "
                                 "(serve over HTTPS).")
    public_docs: bool = Field(default=False, description="Serve /docs and /openapi.json to anyone; "
                              "by default they need a sign-in.")
    tile_url: str | None = Field(
        default=None, description="Basemap tile URL template for the map pages, e.g. a local folder served "
        "under /static/tiles/{z}/{x}/{y}.png. Unset: vector layers on a plain background.")
    tile_attribution: str | None = Field(default=None, description="Attribution shown for the basemap.")
    media_dir: Path | None = Field(
        default=None, description="Where photos are stored, content-addressed (media.py). Unset: `media/` in "
        "the data directory (var/media in a checkout).")
    photo_max_bytes: int = Field(default=10 * 1024 * 1024, description="Largest photo accepted (413 beyond).")
    photos_per_request: int = Field(default=6, description="Most photos one report or upload may carry.")
    background_jobs: bool = Field(
        default=True, description="Run the background jobs in every service process: numbering the outbox for the "
        "live stream, announcing passed deadlines, delivering webhooks (jobs.py). Safe with many processes.")
    webhook_allow: str | None = Field(
        default=None, description="Comma-separated hosts webhooks may target: names, `*.suffix`, IP addresses or "
        "CIDR ranges. Unset: any http(s) URL an admin registers, intranet and loopback included.")
    webhook_timeout_seconds: float = Field(default=10.0, description="How long one webhook attempt may take.")
    events_keepalive_seconds: float = Field(default=15.0, description="Seconds between keep-alive comments on "
                                            "the live event stream (GET /api/v1/events).")
    open311_public: bool = Field(
        default=False, description="Let callers without credentials read the Open311 services and requests "
        "(the public view: category, status, dates, grid, a location rounded to ~100 m). Off on an intranet: "
        "every Open311 read needs credentials; a POST always does.")
    open311_jurisdiction: str = Field(
        default="heshan.gd.cn", description="The one Open311 jurisdiction_id served; a request naming another "
        "is 404 (leaving it out is fine).")
    database_read_urls: str | None = Field(
        default=None,
        description="Comma-separated SQLAlchemy URLs of hot standbys (streaming replicas) of GEO_DATABASE_URL: "
        "reads (the ownership index, lists, map layers, tiles, exports, OGC, analytics) go to them, writes and "
        "reads of what a request just wrote to the primary. Unset: everything on the primary.")
    dask_scheduler: str | None = Field(
        default=None,
        description="Address of a Dask scheduler (tcp://host:8786) that runs analytics jobs (hotspots, density, "
        "large exports) over GeoParquet partitions of the incident history. Unset: jobs run in the service "
        "process; `geo-service hotspots --engine dask` starts a local cluster.")
    load_tolerance_m2: float = Field(
        default=1.0,
        description="Largest gap or overlap (m²) tolerated between sibling areas when loading.",
    )

    @property
    def worker_count(self) -> int:
        """How many worker processes `serve` starts."""
        return (os.cpu_count() or 1) if self.workers == "auto" else int(self.workers)

    @property
    def media_path(self) -> Path:
        return self.media_dir or self.data_dir / "media"

    @property
    def metric_srid(self) -> int:
        return int(self.metric_crs.rsplit(":", 1)[1])


@lru_cache
def get_settings() -> Settings:
    return Settings()
