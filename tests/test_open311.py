"""Open311 GeoReport v2 as clients call it: the `georeport` client library and plain HTTP against
the real server (`geo-service serve`), in JSON and in XML (parsed with xml.etree), with anonymous
reads off (the default: 401) and on (GEO_OPEN311_PUBLIC: the public view only), and errors in the
standard's shape in both formats.

The server commits what it is sent, so the module works in a tiny-dataset database of its own.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET

import pytest
import requests
from georeport import GeoReport

from geo_service import open311, schemas
from tests.conftest import running_server, tiny_database
from tests.test_access import PLATE, TINY_PNG
from tests.test_contracts import check

JURISDICTION = "heshan.gd.cn"  # the default of GEO_OPEN311_JURISDICTION
PHONE = "13912345678"  # in a description: the public must never see it
SERVICE_FIELDS = ["service_code", "service_name", "description", "metadata", "type", "keywords", "group"]
REQUEST_FIELDS = list(schemas.Open311Request.model_fields)
HIDDEN = ("description", "address", "address_id", "media_url")  # null in the public view


@pytest.fixture(scope="module")
def db(server_url, tmp_path_factory):
    with tiny_database(server_url, tmp_path_factory.mktemp("open311"), "open311") as database:
        yield database


@pytest.fixture(scope="module")
def public(db):
    """The base URL of a server with GEO_OPEN311_PUBLIC=true."""
    with running_server(db, open311_public="true") as base:
        yield base + "/open311/v2"


@pytest.fixture(scope="module")
def private(db):
    """The base URL of a server with the default settings (anonymous Open311 reads refused)."""
    with running_server(db) as base:
        yield base + "/open311/v2"


def bearer(db, role: str = "dispatcher") -> dict[str, str]:
    return {"Authorization": f"Bearer {db.keys[role]}"}


@pytest.fixture(scope="module")
def reports(db, public):
    """Requests posted through the standard's POST (api_key in the form body): one at a precise
    point with a phone number in its description, one at a door plate with a photo, one rejected."""
    def post(**fields) -> dict:
        answer = requests.post(public + "/requests.json", data={
            "api_key": db.keys["dispatcher"], "jurisdiction_id": JURISDICTION, **fields})
        assert answer.status_code == 201, answer.text
        return answer.json()[0]

    point = post(service_code="environment", lat="22.703456", long="112.903789",
                 description=f"垃圾堆放, call {PHONE}", **{"attribute[reporter_kind]": "rider"})
    plate = post(service_code="dispute", address_id=PLATE, description=f"邻里纠纷 {PHONE}")
    base = public.removesuffix("/open311/v2")
    photo = requests.post(f"{base}/api/v1/incidents/{plate['service_request_id']}/attachments", headers=bearer(db),
                          files=[("photos", ("a.png", TINY_PNG, "image/png"))])
    assert photo.status_code == 201, photo.text
    rejected = post(service_code="other", lat="22.725", long="112.935", description="重复")
    incident = requests.get(f"{base}/api/v1/incidents/{rejected['service_request_id']}", headers=bearer(db)).json()
    moved = requests.post(f"{base}/api/v1/incidents/{incident['id']}/transitions", headers=bearer(db),
                          json={"action": "reject", "version": incident["version"], "note": "a duplicate"})
    assert moved.status_code == 200, moved.text
    return {"point": point, "plate": plate, "rejected": rejected}


def rounded(value: float) -> bool:
    return round(value, open311.PUBLIC_DECIMALS) == value


# --------------------------------------------------------------------------- the georeport client


def test_the_georeport_client_reads_everything_in_json(public, reports):
    client = GeoReport(public, jurisdiction=JURISDICTION)
    services = client.get_service_list()
    assert {s["service_code"] for s in services} >= {"dispute", "environment", "other"}
    assert all(list(s) == SERVICE_FIELDS and s["metadata"] is True for s in services)
    definition = client.get_service_definition("environment")
    assert definition["service_code"] == "environment"
    assert [a["code"] for a in definition["attributes"]] == ["reporter_kind", "external_id", "crs"]
    kinds = next(a for a in definition["attributes"] if a["code"] == "reporter_kind")
    assert kinds["datatype"] == "singlevaluelist" and {v["key"] for v in kinds["values"]} >= {"rider", "resident"}

    point_id = reports["point"]["service_request_id"]
    everything = client.get_service_requests()
    assert {point_id, reports["plate"]["service_request_id"]} <= {r["service_request_id"] for r in everything}
    rejected_id = reports["rejected"]["service_request_id"]
    by_id = client.get_service_requests(service_request_id=f"{point_id},{rejected_id}")
    assert sorted(r["service_request_id"] for r in by_id) == sorted([point_id, rejected_id])
    assert client.get_service_requests(service_request_id="abc,0") == []  # ids that cannot exist: none, not all
    environment = client.get_service_requests(service_code="environment", status="open")
    assert point_id in [r["service_request_id"] for r in environment]
    assert all(r["service_code"] == "environment" and r["status"] == "open" for r in environment)
    closed = client.get_service_requests(status="closed")
    assert rejected_id in [r["service_request_id"] for r in closed]
    assert all(r["status"] == "closed" for r in closed)
    now = dt.datetime.now(dt.UTC)
    today = client.get_service_requests(start_date=(now - dt.timedelta(hours=1)).isoformat(),
                                        end_date=(now + dt.timedelta(hours=1)).isoformat())
    assert point_id in [r["service_request_id"] for r in today]
    assert client.get_service_requests(start_date="2001-01-01T00:00:00Z", end_date="2001-02-01T00:00:00Z") == []

    one = client.get_service_request(point_id)
    assert one["service_code"] == "environment" and one["status"] == "open" and one["status_notes"] == "assigned"
    assert one["agency_responsible"] == "测试网格111 (440784901001001)"
    assert (one["lat"], one["long"]) == (22.703, 112.904)  # the public view: rounded to ~100 m
    assert all(one[field] is None for field in HIDDEN)


def test_the_georeport_client_reads_everything_in_xml(public, reports):
    client = GeoReport(public, jurisdiction=JURISDICTION, output_format="xml")
    services = client.get_service_list()
    assert {s["service_code"] for s in services} >= {"dispute", "environment"}
    assert all(s["metadata"] == "true" and s["type"] == "realtime" for s in services)
    definition = client.get_service_definition("dispute")
    assert [a["code"] for a in definition["attributes"]["attribute"]] == ["reporter_kind", "external_id", "crs"]
    point_id = reports["point"]["service_request_id"]
    listed = client.get_service_requests(service_request_id=f"{point_id},{reports['plate']['service_request_id']}")
    assert sorted(r["service_request_id"] for r in listed) == sorted([point_id, reports["plate"]["service_request_id"]])
    one = client.get_service_request(point_id)  # xmltodict: one <request> is one dict
    assert one["service_code"] == "environment" and one["lat"] == "22.703" and one["long"] == "112.904"
    assert all(one[field] is None for field in HIDDEN)  # empty elements


def test_a_post_with_api_key_then_its_token_and_request_through_the_client(db, public):
    # georeport 0.3.1 reads only (its README: no creation of requests), so the POST is sent as the
    # standard says, to the client's root address with the client's api_key in the form body.
    client = GeoReport(public, jurisdiction=JURISDICTION, api_key=db.keys["worker"])
    posted = requests.post(client.root_address + "/requests.json", data={
        "api_key": client.api_key, "jurisdiction_id": client.jurisdiction, "service_code": "safety_hazard",
        "lat": "22.735", "long": "112.925", "description": "井盖缺失", "attribute[external_id]": "georeport-1",
        "email": "someone@example.cn", "first_name": "不存", "phone": "13800000009"})
    assert posted.status_code == 201, posted.text
    answer = posted.json()
    check(list[schemas.Open311Posted], posted.content)
    assert answer[0]["token"] == answer[0]["service_request_id"] and answer[0]["service_notice"] == "assigned"
    token = requests.get(f"{client.root_address}/tokens/{answer[0]['token']}.json",
                         params={"jurisdiction_id": JURISDICTION})
    assert token.json() == [{"service_request_id": answer[0]["service_request_id"], "token": answer[0]["token"]}]
    request = client.get_service_request(answer[0]["service_request_id"])
    assert request["service_code"] == "safety_hazard" and request["status"] == "open"
    # A retry with the same external_id answers the request already recorded.
    again = requests.post(client.root_address + "/requests.json", data={
        "api_key": client.api_key, "service_code": "safety_hazard", "lat": "22.735", "long": "112.925",
        "description": "井盖缺失", "attribute[external_id]": "georeport-1"})
    assert again.status_code == 201 and again.json()[0]["service_request_id"] == answer[0]["service_request_id"]
    # The contact fields are not stored anywhere the service answers.
    full = requests.get(f"{public.removesuffix('/open311/v2')}/api/v1/incidents/{answer[0]['service_request_id']}",
                        headers=bearer(db, "admin")).text
    assert "someone@example.cn" not in full and "13800000009" not in full


# --------------------------------------------------------------------------- XML, endpoint by endpoint


def parse(response: requests.Response) -> ET.Element:
    assert response.headers["content-type"].startswith("application/xml"), response.headers["content-type"]
    assert response.content.startswith(b"<?xml")
    return ET.fromstring(response.content)


def test_every_endpoint_answers_georeport_xml(db, public, reports):
    services = parse(requests.get(public + "/services.xml", params={"jurisdiction_id": JURISDICTION}))
    assert services.tag == "services" and {c.tag for c in services} == {"service"}
    assert [e.tag for e in services[0]] == SERVICE_FIELDS
    assert {s.findtext("service_code") for s in services} >= {"dispute", "environment", "other"}

    definition = parse(requests.get(public + "/services/environment.xml"))
    assert definition.tag == "service_definition" and [e.tag for e in definition] == ["service_code", "attributes"]
    attributes = definition.find("attributes").findall("attribute")
    assert [a.findtext("code") for a in attributes] == ["reporter_kind", "external_id", "crs"]
    assert [e.tag for e in attributes[0]] == ["variable", "code", "datatype", "required", "datatype_description",
                                              "order", "description", "values"]
    assert attributes[0].findtext("variable") == "true" and attributes[0].findtext("required") == "false"
    assert "rider" in [v.findtext("key") for v in attributes[0].find("values").findall("value")]
    assert [[e.tag for e in v] for v in attributes[0].find("values")][0] == ["key", "name"]

    listed = parse(requests.get(public + "/requests.xml", params={"service_code": "environment", "status": "open"}))
    assert listed.tag == "service_requests" and {c.tag for c in listed} == {"request"}
    assert all([e.tag for e in r] == REQUEST_FIELDS for r in listed)
    assert reports["point"]["service_request_id"] in [r.findtext("service_request_id") for r in listed]

    one = parse(requests.get(f"{public}/requests/{reports['point']['service_request_id']}.xml"))
    assert one.tag == "service_requests" and len(one) == 1 and one[0].tag == "request"
    assert one[0].findtext("lat") == "22.703" and one[0].find("description").text is None

    full = parse(requests.get(f"{public}/requests/{reports['point']['service_request_id']}.xml",
                              headers=bearer(db)))
    assert PHONE in full[0].findtext("description") and full[0].findtext("lat") == "22.703456"

    token = parse(requests.get(f"{public}/tokens/{reports['point']['token']}.xml"))
    assert [(e.tag, e.text) for e in token[0]] == [("service_request_id", reports["point"]["service_request_id"]),
                                                   ("token", reports["point"]["token"])]

    posted = requests.post(public + "/requests.xml", data={
        "api_key": db.keys["dispatcher"], "service_code": "other", "lat": "22.712", "long": "112.912",
        "description": "xml post"})
    assert posted.status_code == 201
    request = parse(posted)
    assert request.tag == "service_requests" and request[0].tag == "request"
    assert [e.tag for e in request[0]] == ["service_request_id", "token", "service_notice", "account_id"]
    assert request[0].findtext("service_request_id").isdigit() and request[0].find("account_id").text is None


def test_text_xml_cannot_carry_is_replaced_not_sent_broken(db, public):
    posted = requests.post(public + "/requests.json", headers=bearer(db), data={
        "service_code": "other", "lat": "22.712", "long": "112.912", "description": "bell\x07 and\x1b escape"})
    assert posted.status_code == 201, posted.text
    answer = parse(requests.get(f"{public}/requests/{posted.json()[0]['service_request_id']}.xml",
                                headers=bearer(db)))
    assert answer[0].findtext("description") == "bell\ufffd and\ufffd escape"


# --------------------------------------------------------------------------- anonymous reads


READS = ["/services.json", "/services.xml", "/services/dispute.json", "/services/dispute.xml", "/requests.json",
         "/requests.xml", "/requests/{id}.json", "/requests/{id}.xml", "/tokens/{id}.json", "/tokens/{id}.xml"]


def test_anonymous_reads_are_refused_by_default(db, private, reports):
    client = GeoReport(private, jurisdiction=JURISDICTION)
    with pytest.raises(requests.HTTPError) as refused:
        client.get_service_list()
    assert refused.value.response.status_code == 401
    for path in READS:
        url = private + path.replace("{id}", reports["point"]["service_request_id"])
        answer = requests.get(url)
        assert answer.status_code == 401, url
        assert answer.headers["www-authenticate"] == "Bearer"
        if path.endswith(".xml"):
            error = parse(answer)
            assert error.tag == "errors" and error[0].findtext("code") == "401"
            assert "authentication required" in error[0].findtext("description")
        else:
            assert answer.json()[0]["code"] == 401 and "authentication required" in answer.json()[0]["description"]
        assert requests.get(url, headers=bearer(db, "viewer")).status_code == 200, url


def test_anonymous_callers_get_the_public_view_only(db, public, reports):
    for path in READS:
        answer = requests.get(public + path.replace("{id}", reports["plate"]["service_request_id"]))
        assert answer.status_code == 200, (path, answer.text)
        # Nothing of the description, the door plate, the reporter (the key "test-dispatcher"), the
        # people assigned (GW…, PO…) or the photo, in any format.
        for secret in (PHONE, "邻里纠纷", "垃圾堆放", PLATE, "attachments", "test-dispatcher", "GW0", "PO0"):
            assert secret not in answer.text, (path, secret)
    listed = requests.get(public + "/requests.json")
    check(list[schemas.Open311Request], listed.content)
    answers = listed.json()
    assert len(answers) >= 3
    for request in answers:
        assert all(request[field] is None for field in HIDDEN), request
        assert rounded(request["lat"]) and rounded(request["long"]), request
        assert request["agency_responsible"].endswith(")") and request["requested_datetime"]
    # Signed in on the same server: what the role sees, exactly.
    signed_in = {r["service_request_id"]: r for r in requests.get(public + "/requests.json", headers=bearer(db)).json()}
    plate = signed_in[reports["plate"]["service_request_id"]]
    assert plate["address_id"] == PLATE and PHONE in plate["description"] and plate["media_url"].startswith("http")
    point = signed_in[reports["point"]["service_request_id"]]
    assert (point["lat"], point["long"]) == (22.703456, 112.903789)
    viewer = requests.get(f"{public}/requests/{reports['point']['service_request_id']}.json",
                          headers=bearer(db, "viewer")).json()[0]
    assert PHONE not in viewer["description"] and "*" in viewer["description"]  # a viewer's masking (privacy.py)


def test_credentials_sent_to_a_public_server_must_be_valid(public):
    wrong = requests.get(public + "/requests.json", headers={"Authorization": "Bearer gsk_000000000000_wrong"})
    assert wrong.status_code == 401 and wrong.json()[0]["code"] == 401  # never a fall back to the public view
    in_url = requests.get(public + "/services.json", params={"api_key": "gsk_000000000000_leaked"})
    assert in_url.status_code == 401 and "not accepted in the URL" in in_url.json()[0]["description"]


def test_a_post_always_needs_the_key_of_a_role_that_may_report(db, public):
    form = {"service_code": "other", "lat": "22.712", "long": "112.912", "description": "anonymous"}
    anonymous = requests.post(public + "/requests.json", data=form)
    assert anonymous.status_code == 401 and anonymous.json()[0]["code"] == 401
    viewer = requests.post(public + "/requests.xml", data={**form, "api_key": db.keys["viewer"]})
    assert viewer.status_code == 403
    assert "role 'viewer' may not" in parse(viewer)[0].findtext("description")
    bearer_key = requests.post(public + "/requests.json", data=form, headers=bearer(db, "worker"))
    assert bearer_key.status_code == 201


# --------------------------------------------------------------------------- errors, both formats


@pytest.mark.parametrize("method, path, data, status, named", [
    ("GET", "/services/nope", None, 404, "'nope'"),
    ("GET", "/services?jurisdiction_id=elsewhere.cn", None, 404, "'elsewhere.cn'"),
    ("GET", "/requests?status=pending", None, 422, "'pending'"),
    ("GET", "/requests?start_date=2026-02-01T00:00:00Z&end_date=2026-01-01T00:00:00Z", None, 422, "start_date"),
    ("GET", "/requests?start_date=yesterday", None, 422, "'start_date'"),
    ("GET", "/requests/0", None, 422, "'request_id'"),
    ("GET", "/requests/99999999", None, 404, "99999999"),
    ("GET", "/tokens/abc", None, 404, "'abc'"),
    ("GET", "/nowhere", None, 404, "Not Found"),
    ("POST", "/requests", {"service_code": "other", "description": "x", "lat": "22.712", "long": "112.912",
                           "attribute[colour]": "red"}, 422, "attribute[colour]"),
    ("POST", "/requests", {"service_code": "nope", "description": "x", "lat": "22.712", "long": "112.912"}, 422,
     "'nope'"),
    ("POST", "/requests", {"service_code": "other", "description": "x", "address_string": "人民路1号"}, 422,
     "address_string"),
    ("POST", "/requests", {"service_code": "other", "description": "x", "lat": "22.7", "long": "113.5"}, 404,
     "outside the county"),
    ("POST", "/requests", {"service_code": "other", "description": "x", "lat": "22.712", "long": "112.912",
                           "jurisdiction_id": "elsewhere.cn"}, 404, "'elsewhere.cn'"),
    ("POST", "/requests", {"service_code": "other", "description": "a\x00b", "lat": "22.712", "long": "112.912"},
     422, "NUL"),
])
@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_errors_in_the_standards_shape(db, public, fmt, method, path, data, status, named):
    where, _, query = path.partition("?")
    url = f"{public}{where}.{fmt}" + (f"?{query}" if query else "")
    answer = requests.request(method, url, data=data, headers=bearer(db))
    assert answer.status_code == status, answer.text
    if fmt == "xml":
        errors = parse(answer)
        assert errors.tag == "errors" and [e.tag for e in errors] == ["error"]
        assert [e.tag for e in errors[0]] == ["code", "description"]
        code, description = int(errors[0].findtext("code")), errors[0].findtext("description")
    else:
        assert answer.headers["content-type"] == "application/json"
        check(list[schemas.Open311Error], answer.content)
        [error] = answer.json()
        code, description = error["code"], error["description"]
    assert code == status and named in description, description


def test_a_body_over_the_limit_is_413_in_the_standards_shape(db, public):
    too_big = requests.post(public + "/requests.xml", headers={**bearer(db), "Content-Type":
                                                                "application/x-www-form-urlencoded"},
                            data=b"x" * (1024 * 1024 + 1))
    assert too_big.status_code == 413
    assert re.search(r"over the [\d,]+ bytes accepted", parse(too_big)[0].findtext("description"))


def test_other_paths_keep_the_services_own_error_shape(db, public):
    base = public.removesuffix("/open311/v2")
    assert requests.get(base + "/api/v1/stats").json()["detail"].startswith("authentication required")
    assert requests.get(base + "/api/v1/incidents/99999999", headers=bearer(db)).json() == {
        "detail": "incident 99999999 does not exist"}
