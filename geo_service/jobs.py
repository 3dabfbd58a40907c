"""The background jobs of a service process, each on its own thread beside the event loop
(a slow webhook target must not hold up the numbering that the live streams wait for).

Every process of every instance runs them (`GEO_BACKGROUND_JOBS`, on by default); each is safe
to run concurrently, by construction of its SQL: numbering the outbox takes an advisory lock
(changes.sequence), announcing deadlines and claiming webhook deliveries take rows with
`FOR UPDATE SKIP LOCKED`. So nothing here needs to know how many processes there are, and a
request never waits for a job: intake writes its change and returns.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from geo_service import changes, partitions, webhooks
from geo_service.config import Settings

log = logging.getLogger(__name__)


@dataclass
class Job:
    name: str
    every_seconds: float
    run: Callable[[], object]


class Jobs:
    """Runs each job every so often until close(). `latest_seq` is the newest outbox number this
    process has seen: the live streams of the process compare it with where they are."""

    def __init__(self, engine: Engine, settings: Settings, clock: Callable[[], dt.datetime]):
        self.engine = engine
        self.latest_seq = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.jobs = [
            Job("sequence", 0.25, self.refresh),
            Job("overdue", 5.0, lambda: changes.notice_overdue(engine, clock())),
            Job("webhooks", 1.0, lambda: webhooks.deliver_due(engine, settings, clock())),
            # This month's partitions of the history and the next ones, made at start and kept
            # ahead of the calendar (by the database's clock, not a test's); each call costs a few
            # catalog lookups unless a month is missing.
            Job("partitions", 3600.0, self.ensure_partitions),
        ]

    def refresh(self) -> int:
        """Number what has committed and read the newest number: the sequencing job's work, also
        run by the live streams themselves when the jobs are off."""
        changes.sequence(self.engine)
        self.latest_seq = changes.latest(self.engine)
        return self.latest_seq

    def ensure_partitions(self) -> list[partitions.Ensured]:
        with self.engine.begin() as connection:
            return partitions.ensure_ahead(connection)

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._loop, args=(job,), name=f"geo-service-{job.name}",
                                          daemon=True) for job in self.jobs]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)  # daemon threads: a webhook attempt still running is retried after its lease

    def _loop(self, job: Job) -> None:
        while not self._stop.is_set():
            try:
                job.run()
            except Exception:  # a database restart or a bug must not end the job
                log.exception("background job %s failed; retried in %.1f s", job.name, job.every_seconds)
            self._stop.wait(job.every_seconds)
