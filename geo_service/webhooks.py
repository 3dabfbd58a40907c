"""PLACEHOLDER (being written): webhook registration and delivery."""

import datetime as dt

from sqlalchemy import Engine

from geo_service.config import Settings


def deliver_due(engine: Engine, settings: Settings, now: dt.datetime) -> int:
    return 0
