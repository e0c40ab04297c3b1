"""The service's one database: SQLite under DATA_DIR by default, PostgreSQL when DATABASE_URL is set.

Both go through SQLAlchemy Core with the same tables and the same statements. Every status change
is a compare-and-set (`UPDATE ... WHERE status IN (...)`), and check-then-write steps run in one
write transaction (`write()`: BEGIN IMMEDIATE on SQLite, so the check holds until the commit; on
PostgreSQL row locks and unique indexes do that). The schema is created and migrated by Alembic
when a process first opens the database, under a lock (an advisory lock on PostgreSQL, the write
lock on SQLite), so replicas and trainers starting at once migrate it exactly once.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

SQLITE_FILE = "digitlab.sqlite3"
LOCK_WAIT_SECONDS = 30  # several workers and job processes write one SQLite file: wait for its lock, never fail
MIGRATION_LOCK_ID = 1_950_215_471  # the PostgreSQL advisory lock every migrating process takes
MIGRATIONS_DIR = Path(__file__).with_name("migrations")

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # insertion order
    Column("id", Text, nullable=False, unique=True),
    Column("kind", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("params", Text, nullable=False),
    Column("created", Text, nullable=False),
    Column("started", Text),
    Column("finished", Text),
    Column("pid", Integer),
    Column("worker", Text),  # host:pid of the process that ran it
    Column("heartbeat", Float),  # epoch seconds of its process's last sign of life
    Column("epoch", Integer, nullable=False, server_default="0"),
    Column("epochs", Integer, nullable=False, server_default="0"),
    Column("progress", Float, nullable=False, server_default="0"),
    Column("history", Text, nullable=False, server_default="{}"),
    Column("log", Text, nullable=False, server_default="[]"),
    Column("result", Text),
    Column("error", Text),
)

feedback = Table(
    "feedback",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", Text, nullable=False, unique=True),
    Column("created", Text, nullable=False),
    Column("label", Integer, nullable=False),
    Column("predicted", Integer),
    Column("model_version", Text),
    Column("filename", Text),
    Column("path", Text, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("stored", Text, nullable=False),
    Index("feedback_content", "sha256", "label"),
)

# The fleet's active model version: one row, changed only by compare-and-set (backend.data.fleet).
active_model = Table(
    "active_model",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Text, nullable=False),
    Column("previous", Text),
    Column("generation", Integer, nullable=False),
    Column("changed", Text, nullable=False),
)

# Every API worker reports itself here; GET /fleet lists the ones seen lately.
replicas = Table(
    "replicas",
    metadata,
    Column("id", Text, primary_key=True),  # host:pid
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", Text),
    Column("started", Text, nullable=False),
    Column("last_seen", Float, nullable=False),
)

_engines: dict[tuple[int, str], Engine] = {}
_engines_lock = threading.Lock()


def database_url(data_dir: str | os.PathLike, url: str | None = None) -> str:
    """Return the SQLAlchemy URL: DATABASE_URL (postgresql:// means psycopg 3) or SQLite under `data_dir`."""
    if not url:
        return f"sqlite:///{Path(data_dir).resolve() / SQLITE_FILE}"
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def engine(url: str) -> Engine:
    """Return this process's engine for `url`, migrating the schema the first time (a forked child gets its own)."""
    key = (os.getpid(), url)
    with _engines_lock:
        if key not in _engines:
            _engines[key] = _create(url)
            migrate(_engines[key])
        return _engines[key]


def _create(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, a lock wait, and explicit BEGIN (IMMEDIATE for writes)."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=8)
    Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    sqlite = create_engine(url, connect_args={"timeout": LOCK_WAIT_SECONDS}, poolclass=NullPool)

    @event.listens_for(sqlite, "connect")
    def _on_connect(dbapi_connection, record) -> None:
        dbapi_connection.isolation_level = None  # pysqlite's own BEGIN handling is replaced by _on_begin
        # Two connections switching a new file to WAL at once can deadlock, and SQLite then fails one at
        # once instead of waiting. The mode persists in the file, so only a first start switches.
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            try:
                dbapi_connection.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @event.listens_for(sqlite, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get("immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return sqlite


@contextmanager
def write(bound: Engine) -> Iterator[Connection]:
    """Run a check-then-write step in one transaction that holds the write lock until it commits."""
    with bound.connect() as connection:
        connection.execution_options(immediate=True)
        with connection.begin():
            yield connection


@contextmanager
def read(bound: Engine) -> Iterator[Connection]:
    """Open a connection for reads."""
    with bound.connect() as connection:
        yield connection


def migrate(bound: Engine) -> None:
    """Bring the schema to the newest revision, once, however many processes start at the same moment."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    with bound.connect() as connection:
        if MigrationContext.configure(connection).get_current_revision() == head:
            return
    with bound.connect() as connection:
        connection.execution_options(immediate=True)  # SQLite: a second migrator waits here, then finds it done
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            connection.commit()
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
                connection.commit()
