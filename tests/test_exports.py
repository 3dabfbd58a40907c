"""Exports in every format, read back; who may export what; the OGC API, also through GDAL."""

from __future__ import annotations

import io
import subprocess
import zipfile

import geopandas as gpd
import pandas as pd
import pyogrio
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service.app import create_app
from geo_service.exports import SHAPEFILE_NAMES
from tests import tiny
from tests.conftest import running_server

G111 = tiny.grid_code(1, 1, 1)


@pytest.fixture
def client(tiny_db):
    with TestClient(create_app(tiny_db.settings()), headers=tiny_db.headers("admin")) as client:
        yield client


def read_back(fmt: str, content: bytes, tmp_path) -> pd.DataFrame:
    path = tmp_path / f"layer.{fmt}"
    path.write_bytes(content)
    if fmt == "parquet":
        return gpd.read_parquet(path)
    if fmt == "shp":
        with zipfile.ZipFile(path) as archive:
            archive.extractall(tmp_path / "shp")
        return gpd.read_file(next((tmp_path / "shp").glob("*.shp")))
    if fmt == "csv":
        return pd.read_csv(path, dtype=str)
    return gpd.read_file(path)


@pytest.mark.parametrize("fmt, media_type", [
    ("geojson", "application/geo+json"), ("gpkg", "application/geopackage+sqlite3"), ("shp", "application/zip"),
    ("kml", "application/vnd.google-earth.kml+xml"), ("csv", "text/csv; charset=utf-8"),
    ("parquet", "application/vnd.apache.parquet"), ("fgb", "application/flatgeobuf"),
])
def test_every_format_reads_back(client, tmp_path, fmt, media_type):
    response = client.get("/api/v1/export/grids", params={"format": fmt})
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert "heshan-grids-" in response.headers["content-disposition"]
    frame = read_back(fmt, response.content, tmp_path)
    assert len(frame) == 9
    if fmt == "csv":
        assert frame["WKT"].str.startswith("MULTIPOLYGON").all() and G111 in frame["code"].tolist()
    elif fmt == "kml":
        assert G111 in " ".join(frame["Name"].astype(str)) or "测试网格111" in frame["Name"].tolist()
    else:
        assert frame.crs.to_epsg() == 4326
        # FlatGeobuf and the rest keep the order (FlatGeobuf would sort by Hilbert index by default).
        assert frame["code"].tolist() == sorted(frame["code"].tolist())
        exported = frame.loc[frame["code"] == G111, "geometry"].iloc[0]
        assert exported.normalize().equals_exact(tiny.grid_box(1, 1, 1).normalize(), 1e-9) or \
            exported.geoms[0].normalize().equals_exact(tiny.grid_box(1, 1, 1).normalize(), 1e-9)


def test_shapefile_is_zipped_with_projection_and_short_names(client, tmp_path):
    content = client.get("/api/v1/export/communities", params={"format": "shp"}).content
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        names = archive.namelist()
        assert {n.rsplit(".", 1)[1] for n in names} >= {"shp", "shx", "dbf", "prj", "cpg"}
        assert "GEOGCS" in archive.read(next(n for n in names if n.endswith(".prj"))).decode()
    frame = read_back("shp", content, tmp_path)
    assert "comm_code" not in frame.columns and "no_litig" in frame.columns  # no_litigation, shortened
    assert all(len(c) <= 10 for c in frame.columns)
    assert all(len(short) <= 10 for short in SHAPEFILE_NAMES.values())
    assert "测试村11" in frame["name"].tolist()  # UTF-8 survives


def test_every_layer_exports(client, tmp_path):
    for layer, rows in (("towns", 2), ("communities", 4), ("compounds", 1), ("stations", 2), ("door_plates", 2),
                        ("incidents", 2)):
        response = client.get(f"/api/v1/export/{layer}", params={"format": "gpkg"})
        assert response.status_code == 200, (layer, response.text)
        assert len(pyogrio.read_dataframe(io.BytesIO(response.content))) >= rows, layer
    filtered = client.get("/api/v1/export/incidents", params={"format": "csv", "category": "rental_housing"})
    assert read_back("csv", filtered.content, tmp_path)["category"].tolist() == ["rental_housing"]
    unknown = client.get("/api/v1/export/rivers")
    assert unknown.status_code == 422 and "'rivers'" in unknown.json()["detail"]
    wrong = client.get("/api/v1/export/grids", params={"format": "dxf"})
    assert wrong.status_code == 422 and "'dxf'" in wrong.json()["detail"]


def test_people_exports_are_admin_only_and_incidents_carry_no_names(tiny_db, client, tmp_path):
    people = client.get("/api/v1/export/grid_workers", params={"format": "csv"})
    assert people.status_code == 200 and "李某0001" in people.text
    assert client.get("/api/v1/export/grid_workers", params={"format": "gpkg"}).status_code == 422
    for role in ("analyst", "dispatcher", "viewer"):
        denied = client.get("/api/v1/export/police_officers", params={"format": "csv"}, headers=tiny_db.headers(role))
        assert denied.status_code == 403 and "may not export police_officers" in denied.json()["detail"]
    incidents = client.get("/api/v1/export/incidents", params={"format": "csv"}, headers=tiny_db.headers("analyst"))
    assert incidents.status_code == 200
    assert "某" not in incidents.text and "1380000" not in incidents.text and "1390000" not in incidents.text
    assert client.get("/api/v1/export/incidents", headers=tiny_db.headers("viewer")).status_code == 403
    with Session(tiny_db.engine) as session:
        rows = session.execute(text("SELECT object_id, detail FROM audit_log WHERE action = 'export' "
                                    "AND object_id = 'grid_workers'")).all()
    assert rows and rows[-1].detail["rows"] == 3


def test_cli_export_with_progress(tiny_db, tmp_path):
    from click.testing import CliRunner

    from geo_service.cli import main
    from geo_service.config import get_settings

    get_settings.cache_clear()
    out = tmp_path / "plates.gpkg"
    result = CliRunner().invoke(main, ["export", "door_plates", "--format", "gpkg", "--out", str(out)],
                                env={"GEO_DATABASE_URL": tiny_db.url.render_as_string(hide_password=False)})
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "wrote 2 door_plates" in result.output
    assert len(gpd.read_file(out)) == 2


# --------------------------------------------------------------------------- OGC API – Features


def test_ogc_landing_conformance_collections(client):
    landing = client.get("/ogc").json()
    assert {link["rel"] for link in landing["links"]} >= {"self", "service-desc", "conformance", "data"}
    assert "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core" in client.get("/ogc/conformance").json()[
        "conformsTo"]
    collections = client.get("/ogc/collections").json()["collections"]
    assert [c["id"] for c in collections] == ["counties", "towns", "communities", "grids", "compounds", "stations",
                                              "door_plates", "incidents", "hotspots"]
    grids = next(c for c in collections if c["id"] == "grids")
    assert grids["extent"]["spatial"]["bbox"][0] == pytest.approx([112.90, 22.70, 112.94, 22.74])
    assert "temporal" in next(c for c in collections if c["id"] == "incidents")["extent"]
    api = client.get("/ogc/api")
    assert api.headers["content-type"].startswith("application/vnd.oai.openapi+json")
    limit = next(p for p in api.json()["paths"]["/collections/{collectionId}/items"]["get"]["parameters"]
                 if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 10_000


def test_ogc_items_paging_bbox_datetime_and_one_feature(client):
    first = client.get("/ogc/collections/grids/items", params={"limit": 4})
    assert first.headers["content-type"] == "application/geo+json"
    page = first.json()
    assert (page["numberMatched"], page["numberReturned"]) == (9, 4)
    next_link = next(link["href"] for link in page["links"] if link["rel"] == "next")
    assert "offset=4" in next_link
    last = client.get("/ogc/collections/grids/items", params={"limit": 4, "offset": 8}).json()
    assert last["numberReturned"] == 1 and not [link for link in last["links"] if link["rel"] == "next"]
    boxed = client.get("/ogc/collections/grids/items", params={"bbox": "112.90,22.70,112.905,22.705"}).json()
    assert [f["id"] for f in boxed["features"]] == [G111]
    october = client.get("/ogc/collections/incidents/items",
                         params={"datetime": "2026-10-01T00:00:00Z/2026-10-31T23:59:59Z"}).json()
    assert [f["properties"]["external_id"] for f in october["features"]] == ["T-1"]
    open_ended = client.get("/ogc/collections/incidents/items", params={"datetime": "2026-11-01T00:00:00Z/.."}).json()
    assert "T-2" in [f["properties"]["external_id"] for f in open_ended["features"]]
    plate = client.get("/ogc/collections/door_plates/items/YJ440784902002000001").json()
    assert plate["properties"]["building"] is None and "building" in plate["properties"]  # every property, null
    assert "resident_count" not in plate["properties"]
    assert client.get("/ogc/collections/rivers/items").status_code == 404
    assert client.get("/ogc/collections/grids/items/nope").status_code == 404
    assert client.get("/ogc/collections/grids/items", params={"limit": 0}).status_code == 422
    assert client.get("/ogc/collections/grids/items", params={"bbox": "1,2,3"}).status_code == 422


@pytest.fixture(scope="module")
def server(tiny_db):
    with running_server(tiny_db) as base:
        yield base


def gdal(*args, key: str) -> subprocess.CompletedProcess:
    return subprocess.run([*args, "--config", "GDAL_HTTP_HEADERS", f"Authorization: Bearer {key}"],
                          capture_output=True, text=True, timeout=120)


def test_gdal_reads_the_ogc_api_with_an_api_key(server, tiny_db, tmp_path):
    info = gdal("ogrinfo", f"OAPIF:{server}/ogc", "-al", "-so", key=tiny_db.keys["analyst"])
    assert info.returncode == 0, info.stderr
    for layer in ("towns", "grids", "door_plates", "incidents"):
        assert f"Layer name: {layer}" in info.stdout
    out = tmp_path / "ogc.gpkg"
    copy = gdal("ogr2ogr", "-f", "GPKG", str(out), f"OAPIF:{server}/ogc", "grids", "incidents",
                key=tiny_db.keys["analyst"])
    assert copy.returncode == 0, copy.stderr
    grids = gpd.read_file(out, layer="grids")
    assert len(grids) == 9 and G111 in grids["code"].tolist()  # 9 features over GDAL's pages of 10
    assert len(gpd.read_file(out, layer="incidents")) == 2  # the tiny dataset's two
    refused = gdal("ogrinfo", f"OAPIF:{server}/ogc", "-so", key="gsk_000000000000_wrong")
    assert refused.returncode != 0
