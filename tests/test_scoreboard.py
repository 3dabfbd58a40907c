"""The officials' scoreboard: every figure of every grouping, recomputed here in plain Python.

A small world on the tiny dataset: incidents reported and moved through the API at known times
(a controllable clock), whistles, a merged duplicate, a reassignment that restarts a stage, an
incident closed after the period's end and one reopened after it, history reported before the
period, and patrol check-ins at door plates inserted with SQL. The expectations are worked out
from the rows read back (incidents, their timelines, the departments summoned, plates and
check-ins) by `Oracle`, written from README's definitions without the service's code; a few
figures are also stated by hand, so that the oracle itself is checked.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import shapely
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import auth, lifecycle, models
from tests import tiny
from tests.conftest import Clock, make_client, rolled_back_session, tiny_database

CST = dt.timezone(dt.timedelta(hours=8))
G111, G112, G211, G221 = (tiny.grid_code(1, 1, 1), tiny.grid_code(1, 1, 2), tiny.grid_code(2, 1, 1),
                          tiny.grid_code(2, 2, 1))
TOWN1 = "440784901"
T0 = dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.UTC)  # Monday 2 November 2026, 09:00 CST
PERIOD = {"from": "2026-11-01", "to": "2026-11-30"}
START = dt.datetime(2026, 11, 1, tzinfo=CST)
END = dt.datetime(2026, 12, 1, tzinfo=CST)  # `to` is inclusive: the period ends at the next midnight
ASKED_AT = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)  # the clock when the tests ask
GROUPINGS = ("town", "community", "grid", "worker", "department", "category", "week", "month")
TERMINAL = ("closed", "rejected")
HANDLED = ("accepted", "in_progress", "resolved", "verified", "closed")
# README: the stage of each status is bounded by one of the category's hours (lifecycle.deadline_for).
STAGE_HOURS = {"reported": "accept_hours", "assigned": "accept_hours", "returned": "accept_hours",
               "reopened": "accept_hours", "accepted": "resolve_hours", "in_progress": "resolve_hours",
               "escalated": "resolve_hours", "resolved": "verify_hours"}
RESTARTING = ("reassign",)
FIELDS = ("reported", "closed", "closed_on_time", "on_time_rate", "mean_hours", "p90_hours", "backlog", "reopened",
          "reopen_rate", "whistles", "whistles_on_time", "whistle_on_time_rate", "rider_reported", "rider_accepted",
          "rider_closed", "patrol_coverage")
# Door plates added to the tiny dataset's two: (code, lon, lat, town). P6 lies on the edge of
# G111 and G112: the ownership rule gives it to the lower code, G111.
PLATES = (("YJ440784901001000003", 112.905, 22.705, TOWN1), ("YJ440784901001000004", 112.915, 22.71, TOWN1),
          ("YJ440784902002000005", 112.925, 22.735, "440784902"), ("YJ440784901001000006", 112.91, 22.71, TOWN1))


def hours(h: float) -> dt.timedelta:
    return dt.timedelta(hours=h)


# --------------------------------------------------------------------------- the world

class Desk:
    """Reports and moves incidents through the API, each at the time it says."""

    def __init__(self, client, clock: Clock):
        self.client, self.clock, self.ids = client, clock, {}

    def report(self, name: str, at: dt.datetime, category: str, lon: float, lat: float, kind: str = "resident"):
        self.clock.at = at
        answer = self.client.post("/api/v1/incidents", json={"category": category, "description": f"scoreboard {name}",
                                                             "reporter_kind": kind, "lon": lon, "lat": lat})
        assert answer.status_code == 201, answer.text
        self.ids[name] = answer.json()["id"]
        return self

    def act(self, name: str, at: dt.datetime, action: str, **fields):
        self.clock.at = at
        incident = self.ids[name]
        version = self.client.get(f"/api/v1/incidents/{incident}").json()["version"]
        answer = self.client.post(f"/api/v1/incidents/{incident}/transitions",
                                  json={"action": action, "version": version, **fields})
        assert answer.status_code == 200, (name, action, answer.text)
        return self

    def handle(self, name: str, at: dt.datetime, *steps: tuple[float, str]):
        """Several actions at `at` plus their hours."""
        for offset, action in steps:
            self.act(name, at + hours(offset), action, **({"note": "原因"} if action in ("reopen", "reject") else {}))
        return self


def build(desk: Desk, session: Session) -> None:
    a, b, c = T0, T0 + hours(24), T0 + hours(48)
    desk.report("A", a, "dispute", 112.905, 22.71, "rider").handle(
        "A", a, (1, "accept"), (2, "start"), (10, "resolve"), (12, "verify"), (13, "close"))
    # Accepted 5 h after the report: the accept stage (2 h) missed.
    desk.report("B", b, "dispute", 112.915, 22.71).handle(
        "B", b, (5, "accept"), (6, "start"), (20, "resolve"), (22, "verify"), (23, "close"))
    # Two whistles (one reported in late), closed, reopened and closed again in the period.
    desk.report("C", c, "environment", 112.925, 22.735, "grid_worker").handle("C", c, (1, "accept"))
    desk.act("C", c + hours(2), "escalate", departments=["housing"], due_hours=4)
    desk.act("C", c + hours(3), "summon", departments=["public_security"], due_hours=2)
    desk.act("C", c + hours(4), "acknowledge", department="housing")  # due c+6
    desk.act("C", c + hours(6), "acknowledge", department="public_security")  # due c+5: late
    desk.handle("C", c, (8, "resolve"), (10, "verify"), (11, "close"), (72, "reopen"), (73, "accept"),
                (74, "start"), (77, "resolve"), (78, "verify"), (79, "close"))
    d = T0 + hours(72)
    desk.report("D", d, "other", 112.905, 22.715, "rider").handle("D", d, (1, "reject"))
    # Reassigned to another town's grid after 1.5 h: the accept stage starts again, so accepting
    # at 3 h (1.5 h after the reassignment, 3 h after the report) is on time.
    h = T0 + hours(96)
    desk.report("H", h, "dispute", 112.915, 22.705, "police")
    desk.act("H", h + hours(1.5), "reassign", grid=G211)
    desk.handle("H", h, (3, "accept"), (4, "start"), (10, "resolve"), (11, "verify"), (12, "close"))
    j = T0 + hours(240)
    desk.report("J", j, "dispute", 112.905, 22.705).handle("J", j, (1, "accept"), (5, "resolve"), (6, "verify"),
                                                            (7, "close"))
    k = T0 + hours(264)  # accepted exactly at its deadline: on time
    desk.report("K", k, "dispute", 112.915, 22.715, "rider").handle("K", k, (2, "accept"), (3, "resolve"),
                                                                     (4, "verify"), (5, "close"))
    lab = T0 + hours(288)  # a labour dispute goes to the labour specialist, GW00003
    desk.report("L", lab, "labour_dispute", 112.905, 22.705, "police").handle("L", lab, (1, "accept"), (2, "start"))
    e = T0 + hours(18 * 24)
    desk.report("E", e, "dispute", 112.925, 22.73, "hotline").handle("E", e, (1, "accept"), (2, "start"))
    desk.report("G", e + hours(1), "dispute", 112.9251, 22.7301)
    desk.act("G", e + hours(2), "merge", into=desk.ids["E"])
    # Reported a day before the end, accepted, closed only after the end: open at the end, 1 day old.
    i = END - hours(24)
    desk.report("I", i, "safety_hazard", 112.915, 22.712).handle("I", i, (0.5, "accept"))
    desk.handle("I", END, (1, "start"), (20, "resolve"), (30, "verify"), (48, "close"))
    desk.act("J", END + hours(1), "reopen", note="反弹")  # after the end: J stays closed in the period
    # History from before the period: open at the end; a whistle in October, another in the period.
    m = dt.datetime(2026, 10, 20, 2, 0, tzinfo=dt.UTC)
    desk.report("M", m, "rental_housing", 112.926, 22.736).handle("M", m, (1, "accept"))
    desk.act("M", m + hours(2), "escalate", departments=["urban_management"], due_hours=4)
    desk.act("M", T0 + hours(120), "summon", departments=["public_security"], due_hours=24)
    desk.act("M", T0 + hours(122), "acknowledge", department="public_security")
    # Door plates and patrol check-ins (the patrol API is not this module's): in, out of the period.
    for code, lon, lat, town in PLATES:
        session.execute(text("INSERT INTO door_plate (code, address, geom, town_code) VALUES "
                             "(:code, '测试路', ST_SetSRID(ST_MakePoint(:lon, :lat), 4326), :town)"),
                        {"code": code, "lon": lon, "lat": lat, "town": town})
    worker = session.execute(text("SELECT id FROM grid_worker WHERE code = 'GW00001'")).scalar_one()
    for plate, at in (("YJ440784901001000001", T0 + hours(24)), ("YJ440784901001000001", T0 + hours(30)),
                      ("YJ440784901001000004", T0 + hours(48)), ("YJ440784902002000005", m),
                      ("YJ440784901001000006", T0 + hours(72)), ("YJ440784902002000001", END + hours(1))):
        session.execute(text("""
            INSERT INTO patrol_check_in (worker_id, at, geom, door_plate_code, grid_code, in_own_grid, recorded_by_kind)
            SELECT :worker, :at, d.geom, d.code, NULL, true, 'cli' FROM door_plate AS d WHERE d.code = :plate"""),
                        {"worker": worker, "at": at, "plate": plate})


@dataclass
class World:
    client: object
    clock: Clock
    ids: dict[str, int]
    session: Session
    db: object

    def ask(self, by: str, role: str = "dispatcher", path: str = "/api/v1/scoreboard", **params):
        return self.client.get(path, params={"by": by, **PERIOD, **params}, headers=self.db.headers(role))


@pytest.fixture(scope="module")
def db(server_url, tmp_path_factory):
    with tiny_database(server_url, tmp_path_factory.mktemp("scoreboard"), "scoreboard") as database:
        yield database


@pytest.fixture
def session(db) -> Iterator[Session]:
    yield from rolled_back_session(db.admin_engine)


@pytest.fixture
def world(db, session) -> Iterator[World]:
    clock = Clock(T0)
    with make_client(db, session, "dispatcher") as client:
        client.app.state.clock = clock
        desk = Desk(client, clock)
        build(desk, session)
        clock.at = ASKED_AT
        yield World(client, clock, desk.ids, session, db)


# --------------------------------------------------------------------------- the oracle

class Oracle:
    """README's definitions, over the rows as stored."""

    def __init__(self, session: Session, towns: set[str] | None = None, department: str | None = None,
                 names_shown: bool = True):
        rows = lambda sql: session.execute(text(sql)).mappings().all()  # noqa: E731
        self.towns, self.department, self.names_shown = towns, department, names_shown
        summoned = defaultdict(list)
        self.summons = rows("SELECT * FROM incident_department")
        for s in self.summons:
            summoned[s["incident_id"]].append(s)
        self.incidents = [i for i in rows("SELECT * FROM incident") if self.visible(i, summoned[i["id"]])]
        self.summoned = summoned
        self.timeline = defaultdict(list)
        for e in rows("SELECT * FROM incident_event ORDER BY id"):
            self.timeline[e["incident_id"]].append(e)
        self.categories = {c["code"]: c for c in rows("SELECT * FROM incident_category")}
        self.workers = {w["id"]: w for w in rows("SELECT * FROM grid_worker")}
        self.department_names = {d["code"]: d["name"] for d in rows("SELECT * FROM department")}
        self.areas = {"town": {r["code"]: r["name"] for r in rows("SELECT code, name FROM town")},
                      "community": {r["code"]: r["name"] for r in rows("SELECT code, name FROM community")},
                      "grid": {r["code"]: r["name"] for r in rows("SELECT code, name FROM grid")}}
        self.plates = rows("SELECT code, town_code, ST_X(geom) AS lon, ST_Y(geom) AS lat FROM door_plate")
        self.checkins = rows("SELECT door_plate_code, at FROM patrol_check_in")
        # Grids from the dataset's own polygons, lowest code first (the ownership rule on edges).
        self.grid_shapes = sorted((g["code"], g["geometry"]) for _, g in tiny.frames()["grids"].iterrows())

    def visible(self, incident, summoned) -> bool:
        if self.towns is not None and incident["town_code"] not in self.towns:
            return False
        return self.department is None or any(s["department"] == self.department for s in summoned)

    # ----- one incident

    def replay(self, incident, until: dt.datetime):
        """What the timeline says at `until`: the status, the last close, late, reopened, taken up."""
        events = []
        for e in self.timeline[incident["id"]]:
            at = incident["reported_at"] if e["action"] == "import" else e["at"]
            if at < until:
                events.append((at, e))
        if not events:
            return None
        stages = [(at, e["to_status"]) for at, e in events
                  if e["from_status"] is None or e["from_status"] != e["to_status"] or e["action"] in RESTARTING]
        category = self.categories[incident["category_code"]]
        late = any(column is not None and ended > started + hours(category[column])
                   for (started, status), (ended, _) in zip(stages, stages[1:])
                   for column in [STAGE_HOURS.get(status)])
        closes = [at for at, e in events if e["to_status"] == "closed" and e["from_status"] != "closed"]
        return SimpleNamespace(status=events[-1][1]["to_status"], closed_at=closes[-1] if closes else None, late=late,
                               reopened=any(e["action"] == "reopen" for _, e in events),
                               handled=any(e["to_status"] in HANDLED for _, e in events))

    def keys(self, by: str, incident, moment: dt.datetime, departments: list[str]) -> list:
        if by in ("town", "community", "grid"):
            return [incident[f"{by}_code"]]
        if by == "worker":
            worker = incident["assignee_worker_id"]
            return [] if worker is None else [self.workers[worker]["code"]]
        if by == "department":
            return departments
        if by == "category":
            return [incident["category_code"]]
        return [bucket(by, moment)]

    # ----- the figures

    def scoreboard(self, by: str, since: dt.datetime, until: dt.datetime, now: dt.datetime):
        measured = min(until, now)
        found = defaultdict(lambda: {"reported": 0, "closed": 0, "on_time": 0, "hours": [], "reopened": 0,
                                     "backlog": [0, 0, 0, 0], "whistles": 0, "whistles_on_time": 0,
                                     "rider": [0, 0, 0], "plates": 0, "visited": 0})
        total = found["<total>"]
        for incident in self.incidents:
            if incident["duplicate_of"] is not None or incident["reported_at"] >= until:
                continue
            state = self.replay(incident, until)
            in_period = incident["reported_at"] >= since
            departments = sorted(s["department"] for s in self.summoned[incident["id"]] if s["added_at"] < until
                                 and (self.department is None or s["department"] == self.department))
            keys = [] if by in ("week", "month") and not in_period else self.keys(by, incident, incident["reported_at"],
                                                                                    departments)
            for figures in [total] + [found[k] for k in keys]:
                if state.status not in TERMINAL:
                    age = (measured - incident["reported_at"]) / dt.timedelta(days=1)
                    figures["backlog"][0 if age < 1 else 1 if age < 3 else 2 if age < 7 else 3] += 1
                if not in_period:
                    continue
                figures["reported"] += 1
                closed = state.status == "closed"
                if closed:
                    figures["closed"] += 1
                    figures["on_time"] += not state.late
                    figures["reopened"] += state.reopened
                    figures["hours"].append((state.closed_at - incident["reported_at"]).total_seconds() / 3600)
                if incident["reporter_kind"] == "rider":
                    figures["rider"][0] += 1
                    figures["rider"][1] += state.handled
                    figures["rider"][2] += closed
        by_id = {i["id"]: i for i in self.incidents}
        for s in self.summons:
            incident = by_id.get(s["incident_id"])
            if incident is None or not since <= s["added_at"] < until:
                continue
            if self.department is not None and s["department"] != self.department:
                continue
            keys = [s["department"]] if by == "department" else (
                [bucket(by, s["added_at"])] if by in ("week", "month") else self.keys(by, incident, None, []))
            on_time = s["acknowledged_at"] is not None and (s["due_at"] is None or s["acknowledged_at"] <= s["due_at"])
            for figures in [total] + [found[k] for k in keys]:
                figures["whistles"] += 1
                figures["whistles_on_time"] += on_time
        coverage = self.department is None
        if coverage:
            visited = {c["door_plate_code"] for c in self.checkins if since <= c["at"] < until}
            for plate in self.plates:
                if self.towns is not None and plate["town_code"] not in self.towns:
                    continue
                point = shapely.Point(plate["lon"], plate["lat"])
                grid = next((code for code, shape in self.grid_shapes if shape.covers(point)), None)
                if grid is None:
                    continue
                keys = {"town": [grid[:9]], "community": [grid[:12]], "grid": [grid]}.get(by, [])
                for figures in [total] + [found[k] for k in keys]:
                    figures["plates"] += 1
                    figures["visited"] += plate["code"] in visited
        area_coverage = coverage and by in ("town", "community", "grid")
        rows = {code: present(f, area_coverage) for code, f in found.items() if code != "<total>"}
        for code in self.universe(by, since, until):
            rows.setdefault(code, present(found[code], area_coverage))
        return rows, present(total, coverage)

    def universe(self, by: str, since: dt.datetime, until: dt.datetime) -> list[str]:
        """The rows that are there even with nothing to count."""
        if by in ("town", "community", "grid"):
            return [c for c in self.areas[by] if self.towns is None or c[:9] in self.towns]
        if by == "category":
            return list(self.categories)
        if by == "department":
            return [d for d in self.department_names if self.department in (None, d)]
        if by in ("week", "month"):
            day, found = since, []
            while day < until:
                found.append(bucket(by, day))
                day += dt.timedelta(days=1)
            return found
        return []

    def name(self, by: str, code: str) -> str | None:
        if by in ("town", "community", "grid"):
            return self.areas[by].get(code)
        if by == "worker":
            return next(w["name"] for w in self.workers.values() if w["code"] == code) if self.names_shown else None
        if by == "department":
            return self.department_names.get(code)
        if by == "category":
            return self.categories[code]["name"]
        if by == "week":
            day = dt.datetime.strptime(code + "-1", "%G-W%V-%u").date()
            return day.isoformat()
        return code


def bucket(by: str, moment: dt.datetime) -> str:
    day = moment.astimezone(CST).date()
    if by == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{day.year}-{day.month:02d}"


def present(f: dict, coverage: bool) -> dict:
    h = sorted(f["hours"])
    if h:
        position = 0.9 * (len(h) - 1)
        low, high = math.floor(position), math.ceil(position)
        p90 = h[low] + (h[high] - h[low]) * (position - low)
    return {"reported": f["reported"], "closed": f["closed"], "closed_on_time": f["on_time"],
            "on_time_rate": f["on_time"] / f["closed"] if f["closed"] else None,
            "mean_hours": sum(h) / len(h) if h else None, "p90_hours": p90 if h else None,
            "backlog": dict(zip(("lt_1d", "d1_3", "d3_7", "gt_7d"), f["backlog"])), "reopened": f["reopened"],
            "reopen_rate": f["reopened"] / f["closed"] if f["closed"] else None, "whistles": f["whistles"],
            "whistles_on_time": f["whistles_on_time"],
            "whistle_on_time_rate": f["whistles_on_time"] / f["whistles"] if f["whistles"] else None,
            "rider_reported": f["rider"][0], "rider_accepted": f["rider"][1], "rider_closed": f["rider"][2],
            "patrol_coverage": (f["visited"] / f["plates"] if f["plates"] else None) if coverage else None}


def same(answer: dict, expected: dict, where: str) -> None:
    for name in FIELDS:
        got, want = answer[name], expected[name]
        if name in ("mean_hours", "p90_hours"):
            assert (got is None) == (want is None) and (got is None or abs(got - want) <= 0.0051), (where, name, got,
                                                                                                    want)
        elif isinstance(want, float):
            assert got is not None and abs(got - want) <= 0.00005, (where, name, got, want)
        else:
            assert got == want, (where, name, got, want)


def check(answer: dict, oracle: Oracle, by: str, since=START, until=END, now=ASKED_AT) -> None:
    rows, total = oracle.scoreboard(by, since, until, now)
    got = {row["code"]: row for row in answer["rows"]}
    assert sorted(got) == sorted(rows), (by, sorted(got), sorted(rows))
    assert [row["code"] for row in answer["rows"]] == sorted(got), f"{by}: rows not in code order"
    for code, expected in rows.items():
        same(got[code], expected, f"{by} {code}")
        assert got[code]["name"] == oracle.name(by, code), (by, code, got[code]["name"])
    same(answer["total"], total, f"{by} total")


# --------------------------------------------------------------------------- the tests

def test_the_oracle_reads_deadlines_as_the_lifecycle_does():
    category = SimpleNamespace(accept_hours=1, resolve_hours=2, verify_hours=3)
    for status in models.INCIDENT_STATUSES:
        deadline = lifecycle.deadline_for(status, category, T0)
        column = STAGE_HOURS.get(status)
        assert deadline == (None if column is None else T0 + hours(getattr(category, column))), status
    assert RESTARTING == tuple(t.action for t in lifecycle.TRANSITIONS.values() if t.restarts_stage)


def test_every_figure_of_every_grouping_agrees_with_the_oracle(world):
    oracle = Oracle(world.session)
    for by in GROUPINGS:
        answer = world.ask(by)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["by"], body["from"], body["to"], body["measured_at"]) == (
            by, "2026-11-01T00:00:00+08:00", "2026-12-01T00:00:00+08:00", "2026-12-01T00:00:00+08:00")
        check(body, oracle, by)


def test_figures_worked_out_by_hand(world):
    """The oracle's answer, stated by hand for the world above (README's definitions)."""
    total = world.ask("town").json()["total"]
    # Reported: A B C D E H I J K L and the tiny dataset's T-2; G is merged into E, M is October's.
    # Closed at the end: A B C H J K (I closed after it; J reopened after it). B accepted late.
    assert (total["reported"], total["closed"], total["closed_on_time"]) == (11, 6, 5)
    assert total["on_time_rate"] == round(5 / 6, 4) and total["reopened"] == 1 and total["reopen_rate"] == 0.1667
    # Hours to the last close: K 5, J 7, H 12, A 13, B 23, C 79.
    assert total["mean_hours"] == round(139 / 6, 2) and total["p90_hours"] == 51.0
    # Open at the end: I (exactly 1 day old), E, L, M, T-2.
    assert total["backlog"] == {"lt_1d": 0, "d1_3": 1, "d3_7": 0, "gt_7d": 4}
    # C's two summonses (public_security late) and M's in the period; M's October one is not.
    assert (total["whistles"], total["whistles_on_time"]) == (3, 2)
    assert (total["rider_reported"], total["rider_accepted"], total["rider_closed"]) == (3, 2, 2)
    assert total["patrol_coverage"] == 0.5  # of 6 plates, 3 visited in the period
    grids = {row["code"]: row for row in world.ask("grid").json()["rows"]}
    assert grids[G111]["patrol_coverage"] == round(2 / 3, 4) and grids[G112]["patrol_coverage"] == 1.0
    assert grids[tiny.grid_code(1, 2, 1)]["patrol_coverage"] is None  # no plates
    assert grids[G211]["closed_on_time"] == 1  # H, on time thanks to the stage the reassignment restarted
    workers = {row["code"]: row for row in world.ask("worker").json()["rows"]}
    assert workers["GW00003"]["backlog"]["gt_7d"] == 1 and workers["GW00003"]["reported"] == 1  # L
    departments = {row["code"]: row for row in world.ask("department").json()["rows"]}
    assert (departments["housing"]["whistles"], departments["housing"]["whistles_on_time"]) == (1, 1)
    assert departments["housing"]["reported"] == 1 and departments["urban_management"]["whistles"] == 0
    assert departments["urban_management"]["backlog"]["gt_7d"] == 1  # M summoned it in October
    assert all(row["patrol_coverage"] is None for row in departments.values())


def test_a_period_ending_after_now_is_measured_now_and_the_default_is_the_last_30_days(world):
    oracle = Oracle(world.session)
    until = dt.datetime(2027, 1, 1, tzinfo=CST)
    since = dt.datetime(2026, 11, 15, tzinfo=CST)
    for by in ("grid", "worker", "week"):
        body = world.ask(by, **{"from": "2026-11-15", "to": "2026-12-31"}).json()
        assert body["measured_at"] == ASKED_AT.astimezone(CST).isoformat()
        check(body, oracle, by, since, until)
    body = world.client.get("/api/v1/scoreboard", params={"by": "grid"}).json()
    assert (body["from"], body["to"]) == ("2026-11-06T00:00:00+08:00", "2026-12-06T00:00:00+08:00")
    check(body, oracle, "grid", dt.datetime(2026, 11, 6, tzinfo=CST), dt.datetime(2026, 12, 6, tzinfo=CST))
    times = world.ask("town", **{"from": "2026-11-02T09:00:00+08:00", "to": "2026-11-03T01:00:00Z"}).json()
    assert times["to"] == "2026-11-03T09:00:00+08:00"  # an ISO time is the end itself, excluded
    check(times, oracle, "town", T0, dt.datetime(2026, 11, 3, 1, tzinfo=dt.UTC))


def test_a_town_scoped_caller_sees_only_its_town(world):
    oracle = Oracle(world.session, towns={TOWN1})
    for by in GROUPINGS:
        body = world.ask(by, role="scoped").json()
        check(body, oracle, by)
        if by in ("town", "community", "grid"):
            assert body["rows"] and all(row["code"].startswith(TOWN1) for row in body["rows"])
    county = world.ask("town").json()["total"]
    assert world.ask("town", role="scoped").json()["total"]["reported"] < county["reported"]


def test_a_department_sees_its_own_figures(world):
    oracle = Oracle(world.session, department="housing")  # the tiny dataset's department key
    for by in GROUPINGS:
        check(world.ask(by, role="department").json(), oracle, by)
    rows = world.ask("department", role="department").json()["rows"]
    assert [row["code"] for row in rows] == ["housing"] and rows[0]["reported"] == 1  # C
    assert world.ask("town", role="department").json()["total"]["patrol_coverage"] is None


def test_analysts_see_workers_by_code_only_and_workers_are_refused(world, db, session):
    body = world.ask("worker", role="analyst").json()
    check(body, Oracle(world.session, names_shown=False), "worker")
    assert body["rows"] and all(row["name"] is None for row in body["rows"])
    assert world.ask("worker", role="viewer").json()["rows"][0]["name"]
    assert world.ask("town", role="worker").status_code == 403
    assert world.client.get("/api/v1/scoreboard", headers={"Authorization": ""}).status_code == 401


def test_the_csv_holds_the_rows_then_the_total(world):
    for by in GROUPINGS:
        answer = world.ask(by, path="/api/v1/scoreboard.csv")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
        assert answer.headers["content-disposition"] == (
            f'attachment; filename="scoreboard_{by}_2026-11-01_2026-11-30.csv"')
        assert answer.content.startswith("\ufeff".encode())
        table = list(csv.DictReader(io.StringIO(answer.content.decode("utf-8-sig"))))
        body = world.ask(by).json()
        assert len(table) == len(body["rows"]) + 1
        for line, row in zip(table, [*body["rows"], {"code": "", "name": "合计 total", **body["total"]}]):
            assert line == {k: "" if v is None else str(v) for k, v in flat(row).items()}, (by, line)


def flat(row: dict) -> dict:
    out = {"code": row["code"], "name": row["name"]}
    for name in FIELDS:
        if name == "backlog":
            out.update({f"backlog_{k}": v for k, v in row["backlog"].items()})
        else:
            out[name] = row[name]
    return out


def test_the_workbook_has_every_grouping_and_the_definitions(world):
    from openpyxl import load_workbook

    answer = world.ask("town", path="/api/v1/scoreboard.xlsx", role="scoped")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert answer.headers["content-disposition"] == 'attachment; filename="scoreboard_2026-11-01_2026-11-30.xlsx"'
    book = load_workbook(io.BytesIO(answer.content))
    assert book.sheetnames == ["town", "community", "grid", "worker", "department", "category", "definitions"]
    for by in book.sheetnames[:-1]:
        body = world.ask(by, role="scoped").json()
        cells = list(book[by].iter_rows(values_only=True))
        header = cells[0]
        assert header == tuple(flat({"code": 0, "name": 0, **body["total"]}))
        expected = [flat(row) for row in body["rows"]] + [flat({"code": None, "name": "合计 total", **body["total"]})]
        assert [dict(zip(header, line)) for line in cells[1:]] == expected, by
    about = {line[0]: line[1] for line in book["definitions"].iter_rows(values_only=True) if line and line[0]}
    assert about["from"] == "2026-11-01T00:00:00+08:00" and about["to (exclusive)"] == "2026-12-01T00:00:00+08:00"
    assert "towns 440784901" in about["scope"]
    assert {"on_time_rate 按期办结率", "backlog 积压", "patrol_coverage 巡查覆盖率"} <= set(about)


@pytest.mark.parametrize(("params", "named"), [
    ({"by": "street"}, "by 'street' is not one of"),
    ({"from": "yesterday"}, "from 'yesterday' is not a date"),
    ({"to": "2026-13-01"}, "to '2026-13-01' is not a date"),
    ({"from": "2026-12-01", "to": "2026-11-01"}, "is not before to"),
    ({"from": "0001-01-01T00:00:00+08:00"}, "outside the years 1-9999"),
    ({"to": "9999-12-31"}, "outside the years 1-9999"),
    ({"by": "week", "from": "1900-01-01"}, "rows; at most 600: choose a shorter period or by=month"),
])
def test_bad_parameters_are_422_naming_the_value(tiny_db, params, named):
    from fastapi.testclient import TestClient

    from geo_service.app import create_app

    with TestClient(create_app(tiny_db.settings()), headers=tiny_db.headers()) as client:
        for path in ("/api/v1/scoreboard", "/api/v1/scoreboard.csv", "/api/v1/scoreboard.xlsx"):
            if path.endswith(".xlsx") and "by" in params:
                continue
            answer = client.get(path, params=params)
            assert answer.status_code == 422 and named in answer.json()["detail"], (path, answer.text)


def test_the_department_account_is_a_department_user_too(db, session):
    """A department user (not only a key) gets the same figures as the department's key."""
    auth.create_user(session, "sb-housing", "department", password="department password", department="housing")
    with make_client(db, session) as client:
        client.app.state.clock = Clock(ASKED_AT)
        token = client.post("/api/v1/auth/token", data={"username": "sb-housing", "password": "department password"})
        mine = client.get("/api/v1/scoreboard", params={"by": "department"},
                          headers={"Authorization": f"Bearer {token.json()['access_token']}"})
    assert mine.status_code == 200 and [row["code"] for row in mine.json()["rows"]] == ["housing"]
