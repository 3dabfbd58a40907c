"""Request and response models of the HTTP API."""

from pydantic import BaseModel, Field


class ErrorRead(BaseModel):
    detail: str = Field(description="What went wrong, quoting the offending value.")


class HealthRead(BaseModel):
    status: str = Field(description="`ok` when the service can answer, `unavailable` otherwise.")
    database: str = Field(description="`ok`, or why the database cannot be reached.")
    postgis: str | None = Field(default=None, description="PostGIS version, when reachable.")
    version: str = Field(description="geo_service version.")


class GridWorkerCounts(BaseModel):
    full_time: int = Field(description="Full-time grid workers (专职网格员).")
    part_time: int = Field(description="Part-time grid workers (兼职网格员), riders included.")
    professional: int = Field(description="Professional grid workers (专业网格员).")
    riders: int = Field(description="Part-time workers from the 骑行侠·码上帮 rider platform.")


class StatsRead(BaseModel):
    towns: int
    communities: int
    grids: int
    compounds: int
    grid_workers: GridWorkerCounts
    police: int = Field(description="Community police and auxiliary police serving as deputy grid leaders.")
    stations: dict[str, int] = Field(description="Stations by kind.")
    door_plates: int = Field(description="粤居码 door plates.")
    incidents: int
