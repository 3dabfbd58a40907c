"""Photos of incidents (issue 14): multipart intake, cleaning (EXIF and every metadata block
removed, orientation applied), limits, thumbnails, attachments under the visibility rule,
Open311 media_url, no orphaned files."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator

import pytest
from PIL import Image, PngImagePlugin
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import auth, media
from geo_service.config import Settings
from tests.conftest import make_client, rolled_back_session, tiny_database, workers

T0 = dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.UTC)
REPORT = {"category": "environment", "description": "垃圾堆放", "reporter_kind": "grid_worker",
          "lon": "112.903", "lat": "22.703"}
FAR = {**REPORT, "lon": "112.925", "lat": "22.735"}  # town 440784902


def jpeg_with_gps(size=(40, 20), orientation=6) -> bytes:
    image = Image.new("RGB", size, "red")
    image.paste(Image.new("RGB", (10, 10), "blue"), (0, 0))  # a corner, to see the rotation
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "PhoneMaker"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (22.0, 42.0, 12.5), "E", (112.0, 54.0, 7.25)
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes(), comment=b"home of the reporter")
    return out.getvalue()


def png_with_text() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Location", "22.7,112.9 home")
    out = io.BytesIO()
    Image.new("RGBA", (500, 300), (0, 128, 0, 128)).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def webp() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), "yellow").save(out, "WEBP", exif=jpeg_exif_bytes())
    return out.getvalue()


def jpeg_exif_bytes() -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8825)[2] = (22.0, 42.0, 12.5)
    return exif.tobytes()


@pytest.fixture(scope="module")
def db(server_url, tmp_path_factory):
    accounts = workers(("gw3", "GW00003"))
    with tiny_database(server_url, tmp_path_factory.mktemp("media"), "media", accounts) as database:
        yield database


@pytest.fixture
def session(db) -> Iterator[Session]:
    yield from rolled_back_session(db.admin_engine)


@pytest.fixture
def media_dir(tmp_path):
    return tmp_path / "media"


@pytest.fixture
def client(db, session, media_dir):
    with make_client(db, session, "dispatcher", media_dir=media_dir) as client:
        client.app.state.clock = lambda: T0
        yield client


def post(client, photos, fields=REPORT, **kwargs):
    return client.post("/api/v1/incidents", data=fields, files=[("photos", p) for p in photos], **kwargs)


def stored(media_dir, digest: str) -> bytes:
    return (media_dir / digest[:2] / digest[2:4] / digest).read_bytes()


def test_a_report_with_photos_stores_them_without_metadata(client, media_dir):
    original = jpeg_with_gps()
    assert b"Exif" in original and b"home of the reporter" in original
    answer = post(client, [("street.jpg", original, "image/jpeg"), ("sign.png", png_with_text(), "image/png"),
                           ("x.webp", webp(), "image/webp")])
    assert answer.status_code == 201, answer.text
    incident = answer.json()
    assert incident["status"] == "assigned" and len(incident["attachments"]) == 3
    first, second, third = incident["attachments"]
    assert (first["content_type"], first["width"], first["height"]) == ("image/jpeg", 20, 40)  # turned upright
    assert (second["content_type"], third["content_type"]) == ("image/png", "image/webp")
    assert first["filename"] == "street.jpg" and first["purpose"] == "report"
    photo = client.get(first["url"])
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
    for data in (photo.content, client.get(second["url"]).content, client.get(third["url"]).content):
        image = Image.open(io.BytesIO(data))
        assert not image.getexif() and "exif" not in image.info and "icc_profile" not in image.info
        assert b"Exif" not in data and b"home" not in data and b"Location" not in data and b"PhoneMaker" not in data
    upright = Image.open(io.BytesIO(photo.content)).convert("RGB")
    assert upright.getpixel((upright.width - 3, 3))[2] > 200  # the blue corner, after the 90° turn
    thumb = client.get(first["thumb_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    big = client.get(second["thumb_url"])
    assert max(Image.open(io.BytesIO(big.content)).size) == media.THUMB_SIDE
    read = client.get(f"/api/v1/incidents/{incident['id']}").json()
    assert [a["id"] for a in read["attachments"]] == [a["id"] for a in incident["attachments"]]
    assert stored(media_dir, media.clean(original, None, Settings()).sha256) == photo.content


@pytest.mark.parametrize("photos, status, message", [
    ([("a.jpg", b"not an image at all", "image/jpeg")], 415, "'a.jpg' is not a JPEG, PNG or WebP"),
    ([("a.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/gif")], 415, "'a.gif' is"),
    ([("cut.jpg", jpeg_with_gps()[:300], "image/jpeg")], 422, "'cut.jpg' could not be decoded"),
    ([(f"p{i}.jpg", jpeg_with_gps(), "image/jpeg") for i in range(7)], 422, "7 photos sent; at most 6"),
])
def test_bad_photos_are_refused_and_nothing_is_recorded(client, session, photos, status, message):
    before = session.execute(text("SELECT count(*) FROM incident")).scalar_one()
    answer = post(client, photos)
    assert answer.status_code == status and message in answer.json()["detail"], answer.text
    assert session.execute(text("SELECT count(*) FROM incident")).scalar_one() == before


def test_size_limits(db, session, media_dir):
    with make_client(db, session, "dispatcher", media_dir=media_dir, photo_max_bytes=2000) as client:
        large = post(client, [("big.jpg", jpeg_with_gps((400, 400)), "image/jpeg")])
        assert large.status_code == 413 and "'big.jpg'" in large.json()["detail"]
    with make_client(db, session, "dispatcher", media_dir=media_dir, photo_max_bytes=1000, max_body_bytes=1000,
                     photos_per_request=1) as client:
        body = post(client, [("big.jpg", b"\xff" * 5000, "image/jpeg")])
        assert body.status_code == 413  # the whole body over (1 photo + form) is refused before parsing


def test_form_fields_are_checked_like_json(client):
    missing = client.post("/api/v1/incidents", data={**REPORT, "lon": "east"},
                          files=[("photos", ("a.jpg", jpeg_with_gps(), "image/jpeg"))])
    assert missing.status_code == 422 and "lon" in missing.json()["detail"]
    outside = post(client, [("a.jpg", jpeg_with_gps(), "image/jpeg")], fields={**REPORT, "lon": "113.5"})
    assert outside.status_code == 404


def test_a_retried_report_does_not_add_its_photos_twice(client):
    fields = {**REPORT, "external_id": "phone-0001"}
    first = post(client, [("a.jpg", jpeg_with_gps(), "image/jpeg")], fields=fields)
    again = post(client, [("a.jpg", jpeg_with_gps(), "image/jpeg")], fields=fields)
    assert (first.status_code, again.status_code) == (201, 200)
    assert [a["id"] for a in again.json()["attachments"]] == [a["id"] for a in first.json()["attachments"]]


def test_evidence_is_added_later_by_who_may_see_the_incident(client, db):
    incident = post(client, []).json()
    assert incident["attachments"] == []
    files = [("photos", ("done.png", png_with_text(), "image/png"))]
    added = client.post(f"/api/v1/incidents/{incident['id']}/attachments", files=files)
    assert added.status_code == 201, added.text
    assert [a["purpose"] for a in added.json()["attachments"]] == ["evidence"]
    worker = client.post("/api/v1/auth/token", data={"username": "gw3", "password": "worker password"}).json()
    as_worker = {"Authorization": f"Bearer {worker['access_token']}"}
    labour = post(client, [], fields={**REPORT, "category": "labour_dispute"}).json()
    assert labour["assignee"]["code"] == "GW00003"
    own = client.post(f"/api/v1/incidents/{labour['id']}/attachments", files=files, headers=as_worker)
    assert own.status_code == 201, own.text
    other = client.post(f"/api/v1/incidents/{incident['id']}/attachments", files=files, headers=as_worker)
    assert other.status_code == 404  # not in the worker's queue: as if it did not exist
    assert client.post(f"/api/v1/incidents/{incident['id']}/attachments", files=files,
                       headers=db.headers("viewer")).status_code == 403
    assert client.post(f"/api/v1/incidents/{incident['id']}/attachments", data={"purpose": "x"},
                       files=files).status_code == 422


def test_photos_follow_the_visibility_rule(client, db):
    far = post(client, [("a.jpg", jpeg_with_gps(), "image/jpeg")], fields=FAR).json()
    url = far["attachments"][0]["url"]
    assert client.get(url).status_code == 200
    assert client.get(url, headers=db.headers("scoped")).status_code == 404  # a dispatcher of the other town
    assert client.get(url + "?size=thumb", headers=db.headers("scoped")).status_code == 404
    assert client.get(url, headers={"Authorization": "Bearer nothing"}).status_code == 401
    assert client.get(url + "?size=huge").status_code == 422


def test_open311_answers_carry_media_url(client):
    with_photo = post(client, [("a.jpg", jpeg_with_gps(), "image/jpeg")]).json()
    without = post(client, []).json()
    answers = {r["service_request_id"]: r for r in client.get("/open311/v2/requests.json").json()}
    assert answers[str(with_photo["id"])]["media_url"].endswith(with_photo["attachments"][0]["url"])
    assert answers[str(with_photo["id"])]["media_url"].startswith("http")
    assert answers[str(without["id"])]["media_url"] is None
    one = client.get(f"/open311/v2/requests/{with_photo['id']}.json").json()[0]
    assert one["media_url"] == answers[str(with_photo["id"])]["media_url"]


def test_files_of_removed_incidents_are_collected(client, session, media_dir):
    kept = post(client, [("a.jpg", jpeg_with_gps((800, 600)), "image/jpeg")]).json()
    gone = post(client, [("b.png", png_with_text(), "image/png")]).json()
    settings = Settings(media_dir=media_dir)
    files = {p.name for p in media_dir.glob("??/??/*")}
    assert len(files) == 4  # two photos, two thumbnails (a photo within 320 px is its own thumbnail)
    session.execute(text("DELETE FROM incident_event WHERE incident_id = :id"), {"id": gone["id"]})
    session.execute(text("DELETE FROM incident_change WHERE incident_id = :id"), {"id": gone["id"]})
    session.execute(text("DELETE FROM incident WHERE id = :id"), {"id": gone["id"]})
    assert media.collect_garbage(session, settings) == []  # too fresh: an upload may be committing
    removed = media.collect_garbage(session, settings, grace=dt.timedelta(0))
    assert len(removed) == 2
    left = {p.name for p in media_dir.glob("??/??/*")}
    assert left == files - set(removed) and client.get(kept["attachments"][0]["url"]).status_code == 200


def test_my_reports(client, db):
    worker = client.post("/api/v1/auth/token", data={"username": "gw3", "password": "worker password"}).json()
    as_worker = {"Authorization": f"Bearer {worker['access_token']}"}
    mine = post(client, [], fields={**REPORT, "reporter_kind": "grid_worker"}, headers=as_worker).json()
    theirs = post(client, []).json()
    listed = client.get("/api/v1/incidents", params={"mine": "true"}, headers=as_worker).json()
    assert [i["id"] for i in listed["items"]] == [mine["id"]] and listed["total"] == 1
    by_dispatcher = client.get("/api/v1/incidents", params={"mine": "true", "limit": 1000}).json()
    assert theirs["id"] in {i["id"] for i in by_dispatcher["items"]}
    assert mine["id"] not in {i["id"] for i in by_dispatcher["items"]}


def test_accounts_say_what_they_report_as(client, db, session):
    auth.create_user(session, "rider2", "worker", password="rider password", person_code="GW00002")
    auth.create_user(session, "po1", "worker", password="police password", person_code="PO00001")
    kinds = {}
    for name, password in (("gw3", "worker password"), ("rider2", "rider password"), ("po1", "police password")):
        token = client.post("/api/v1/auth/token", data={"username": name, "password": password}).json()
        me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token['access_token']}"}).json()
        kinds[name] = me["reporter_kind"]
    assert kinds == {"gw3": "grid_worker", "rider2": "rider", "po1": "police"}
    assert client.get("/api/v1/auth/me").json()["reporter_kind"] is None  # a dispatcher's key: no person
