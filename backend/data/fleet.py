"""One model version across a fleet: the active version as a database row, and the replicas reporting in.

With DATABASE_URL set, the active version is a row changed only by compare-and-set, so two racing
promotions cannot interleave: the second finds the row moved and is refused. Each worker reads the
row's generation at most every POLL_SECONDS (never once per request), and a background thread
(`follow`) makes idle workers pick up a change too, then loads and swaps as on a single host.
The ACTIVE file stays the pointer of the single-host mode, and seeds the row on a fleet's first start.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import nullcontext
from datetime import UTC, datetime
from types import EllipsisType
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from backend.core.config import Settings
from backend.core.inference import ActiveModel
from backend.core.store import ActivationConflictError, FilePointer, ModelStore
from backend.data import db
from backend.data.db import active_model, replicas

log = logging.getLogger(__name__)

POINTER_ROW = 1
POLL_SECONDS = 0.5  # a worker sees an activation within this (plus its load time): well inside 1 s
BEAT_SECONDS = 1.0  # how often each API worker reports itself and checks the active version
GONE_SECONDS = 10.0  # a replica worker not heard from for this long is no longer listed


def iso(seconds: float) -> str:
    """Return epoch seconds as ISO 8601 UTC."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


class DatabasePointer:
    """The fleet's active-version pointer: one row, moved by compare-and-set, polled at most every POLL_SECONDS."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._checked = float("-inf")
        self._generation: int | None = None

    def read(self) -> str | None:
        """Return the active version the row names."""
        with db.read(self.engine) as connection:
            return connection.execute(select(active_model.c.version).where(active_model.c.id == POINTER_ROW)).scalar()

    def stamp(self) -> int | None:
        """Return the row's generation, re-read at most every POLL_SECONDS."""
        if time.monotonic() - self._checked >= POLL_SECONDS:
            with db.read(self.engine) as connection:
                self._generation = connection.execute(
                    select(active_model.c.generation).where(active_model.c.id == POINTER_ROW)
                ).scalar()
            self._checked = time.monotonic()
        return self._generation

    def swap(
        self, version: str, expected: str | None | EllipsisType = ..., connection: Connection | None = None
    ) -> None:
        """Move the row to `version` if it still names `expected` (any, for ...); else raise ActivationConflictError."""
        with nullcontext(connection) if connection is not None else db.write(self.engine) as transaction:
            current = transaction.execute(
                select(active_model.c.version).where(active_model.c.id == POINTER_ROW).with_for_update()
            ).scalar()
            if expected is not ... and current != expected:
                raise ActivationConflictError(f"the active version changed from {expected} to {current} meanwhile")
            if current is None:
                self._insert(transaction, version)
            else:
                moved = transaction.execute(
                    update(active_model)
                    .where(active_model.c.id == POINTER_ROW, active_model.c.version == current)
                    .values(
                        version=version,
                        previous=current,
                        generation=active_model.c.generation + 1,
                        changed=iso(time.time()),
                    )
                )
                if moved.rowcount != 1:
                    raise ActivationConflictError(f"another activation moved the active version from {current}")
        self._checked = float("-inf")  # this worker sees its own change at once

    @staticmethod
    def _insert(connection: Connection, version: str) -> None:
        """Create the row; a racing first activation that created it already wins."""
        try:
            with connection.begin_nested():
                connection.execute(
                    insert(active_model).values(id=POINTER_ROW, version=version, generation=1, changed=iso(time.time()))
                )
        except IntegrityError as exc:
            raise ActivationConflictError("another activation set the first active version meanwhile") from exc

    def seed(self, version: str | None) -> None:
        """Set the first active version (from the ACTIVE file) unless the fleet already has one."""
        if version is None:
            return
        try:
            self.swap(version, expected=None)
        except ActivationConflictError:
            pass  # the row exists: the fleet's pointer wins over the file


def model_store(settings: Settings) -> ModelStore:
    """Return the model store with the pointer this configuration uses: the database row in a fleet, else ACTIVE."""
    if not settings.database_url:
        return ModelStore(settings.model_dir)
    pointer = DatabasePointer(db.engine(db.database_url(settings.data_dir, settings.database_url)))
    pointer.seed(FilePointer(settings.model_dir).read())
    return ModelStore(settings.model_dir, pointer)


class Replicas:
    """The API workers of the fleet, each reporting its host, pid and served version every BEAT_SECONDS."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.me = {"id": f"{socket.gethostname()}:{os.getpid()}", "host": socket.gethostname(), "pid": os.getpid()}
        self.started = iso(time.time())

    def beat(self, version: str | None) -> None:
        """Report this worker as alive and serving `version`."""
        with db.write(self.engine) as connection:
            fields = {"version": version, "last_seen": time.time()}
            moved = connection.execute(update(replicas).where(replicas.c.id == self.me["id"]).values(**fields))
            if moved.rowcount == 0:
                connection.execute(insert(replicas).values(**self.me, started=self.started, **fields))

    def leave(self) -> None:
        """Remove this worker from the list (at a clean exit)."""
        with db.write(self.engine) as connection:
            connection.execute(delete(replicas).where(replicas.c.id == self.me["id"]))

    def live(self) -> list[dict[str, Any]]:
        """Return the workers heard from in the last GONE_SECONDS, by host and pid."""
        cutoff = time.time() - GONE_SECONDS
        with db.read(self.engine) as connection:
            rows = connection.execute(
                select(replicas).where(replicas.c.last_seen >= cutoff).order_by(replicas.c.host, replicas.c.pid)
            ).mappings()
            return [{**row, "last_seen": iso(row["last_seen"])} for row in rows]


def follow(model: ActiveModel, registry: Replicas, stop: threading.Event) -> threading.Thread:
    """Start a thread that keeps an idle worker on the active version and reports it, until `stop` is set."""

    def run() -> None:
        while not stop.is_set():
            try:
                model.current()
                registry.beat(model.version)
            except Exception as exc:  # the database is briefly away: keep serving, try again next beat
                log.warning("could not report to the fleet: %s", exc)
            stop.wait(BEAT_SECONDS)
        try:
            registry.leave()
        except Exception as exc:
            log.warning("could not leave the fleet list: %s", exc)

    thread = threading.Thread(target=run, name="fleet-follow", daemon=True)
    thread.start()
    return thread
