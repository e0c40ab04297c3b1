"""Fleet fixtures (a pytest plugin loaded by tests/conftest.py): PostgreSQL, Redis and nginx from deploy/localfleet.py.

PostgreSQL and Redis start once per session; each test that asks gets its own database (`fresh_database_url`)
or its own, emptied, Redis database (`fresh_redis_url`). `nginx_in_front` runs nginx with deploy/nginx.conf in
front of given upstreams. The servers' folders live in the system's temporary folder, not pytest's: started by
root, the servers run as their own system users, who cannot enter pytest's private folders.
Missing binaries skip the tests that need them, with the install command; under CI=true those tests fail instead.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from deploy import localfleet
from tests.support.browser import in_ci

REDIS_TEST_DATABASES = range(1, 16)  # Redis's default 16 databases; 0 is the session's own
_redis_databases = itertools.cycle(REDIS_TEST_DATABASES)


def require_servers(*names: str) -> None:
    """Skip the test (outside CI) or fail it (under CI) unless these servers (postgres, redis-server, nginx) exist."""
    missing = [name for name in localfleet.missing_binaries() if name in names]
    if missing:
        message = f"{', '.join(missing)} not installed: {localfleet.INSTALL_COMMAND}"
        if in_ci():
            pytest.fail(f"CI=true but {message}: the fleet tests must run in CI")
        pytest.skip(message)


@contextlib.contextmanager
def server_folder(prefix: str = "digitlab-fleet-") -> Iterator[Path]:
    """Make a temporary folder that other users may enter (not list), and remove it afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        folder.chmod(0o711)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def fleet_folder() -> Iterator[Path]:
    """The session's folder for its PostgreSQL and Redis."""
    with server_folder() as folder:
        yield folder


@pytest.fixture(scope="session")
def postgres_url(fleet_folder) -> Iterator[str]:
    """The URL of the session's PostgreSQL `digitlab` database (fsync off: test data is thrown away)."""
    require_servers("postgres")
    with localfleet.postgres(fleet_folder / "postgres", durable=False) as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_url(fleet_folder) -> Iterator[str]:
    """The URL of the session's Redis (database 0)."""
    require_servers("redis-server")
    with localfleet.redis(fleet_folder / "redis") as server:
        yield server.url


@pytest.fixture()
def fresh_database_url(postgres_url) -> Iterator[str]:
    """The URL of a new, empty database on the session's PostgreSQL, dropped after the test."""
    import psycopg
    from psycopg import sql

    name = f"test_{uuid.uuid4().hex[:16]}"
    url = localfleet.create_database(postgres_url, name)
    yield url
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture()
def fresh_redis_url(redis_url) -> str:
    """The URL of an emptied Redis database (1 to 15, in turn) on the session's Redis."""
    import redis

    url = urlsplit(redis_url)._replace(path=f"/{next(_redis_databases)}").geturl()
    with redis.Redis.from_url(url) as connection:
        connection.flushdb()
    return url


@contextlib.contextmanager
def nginx_in_front(upstreams: Sequence[str], port: int | None = None) -> Iterator[localfleet.Nginx]:
    """Run nginx with deploy/nginx.conf on loopback in front of these upstream URLs; yield it (`.url`, `.reload`)."""
    require_servers("nginx")
    with server_folder("digitlab-nginx-") as folder:
        with localfleet.nginx(folder / "nginx", upstreams, port) as server:
            yield server


def access_log(server: localfleet.Nginx) -> list[str]:
    """Return the lines nginx has logged for requests so far."""
    path = server.access_log
    return path.read_text().splitlines() if path.exists() else []
