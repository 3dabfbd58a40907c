"""Is the service able to answer: database reachable, PostGIS present."""

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from geo_service import __version__


def check(engine: Engine) -> dict:
    try:
        with engine.connect() as connection:
            postgis = connection.execute(text("SELECT postgis_lib_version()")).scalar_one()
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        return {"status": "unavailable", "database": f"unavailable: {reason}", "version": __version__}
    return {"status": "ok", "database": "ok", "postgis": postgis, "version": __version__}
