"""The fleet's infrastructure (deploy/): PostgreSQL, Redis and nginx really start and answer; nginx spreads requests,
passes request ids, retries only predictions and enforces the upload limit; docker compose runs the same commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
import redis
import requests
import yaml
from werkzeug.serving import make_server

from backend.core.config import REPO_ROOT, Settings
from deploy import localfleet
from tests.support.fleet import access_log, nginx_in_front, require_servers, server_folder

COMPOSE = REPO_ROOT / "deploy" / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
COMPOSE_API = {"host": "0.0.0.0", "port": 8000}
COMPOSE_DASHBOARD = {"host": "0.0.0.0", "port": 8501}
PREDICTIONS = ["/predict", "/predict/batch", "/predict/sequence", "/explain"]
STATE_CHANGES = [
    "/retrain",
    "/upload_and_retrain",
    "/feedback",
    "/models/20260101-000000-abcd/activate",
    "/jobs/7/cancel",
]


@dataclass
class Echo:
    """A tiny in-process HTTP server that records what it receives and answers with its name."""

    name: str
    url: str = ""
    seen: list[dict] = field(default_factory=list)

    def __call__(self, environ, start_response):
        """Answer any request with this server's name and the request's method, path and forwarded headers."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        received = len(environ["wsgi.input"].read(length)) if length else 0
        record = {
            "server": self.name,
            "method": environ["REQUEST_METHOD"],
            "path": environ["PATH_INFO"],
            "request_id": environ.get("HTTP_X_REQUEST_ID"),
            "forwarded_for": environ.get("HTTP_X_FORWARDED_FOR"),
            "host": environ.get("HTTP_HOST"),
            "bytes": received,
        }
        self.seen.append(record)
        body = json.dumps(record).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


@pytest.fixture(scope="module")
def echoes() -> Iterator[tuple[Echo, Echo]]:
    """Two echo servers on loopback threads, standing in for two API replicas."""
    servers, pair = [], (Echo("a"), Echo("b"))
    for echo in pair:
        server = make_server(localfleet.LOOPBACK, 0, echo, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        echo.url = f"http://{localfleet.LOOPBACK}:{server.server_port}"
        servers.append(server)
    yield pair
    for server in servers:
        server.shutdown()


@pytest.fixture()
def echo_pair(echoes) -> tuple[Echo, Echo]:
    """The echo servers, with nothing recorded yet."""
    for echo in echoes:
        echo.seen.clear()
    return echoes


@pytest.fixture(scope="module")
def proxy(echoes) -> Iterator[localfleet.Nginx]:
    """nginx with deploy/nginx.conf in front of both echo servers."""
    with nginx_in_front([echo.url for echo in echoes]) as server:
        yield server


def logged_upstreams(server: localfleet.Nginx, path: str) -> str:
    """Return the upstream addresses nginx logged for its last request to `path` (waiting briefly for the line)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in access_log(server) if f" {path} HTTP/" in line]
        if lines:
            return re.search(r"upstream=(.*?) upstream_status=", lines[-1])[1]
        time.sleep(0.05)
    raise AssertionError(f"nginx logged no request to {path}:\n" + "\n".join(access_log(server)))


@pytest.mark.slow
def test_postgres_starts_and_answers(postgres_url):
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT 1, current_database()").fetchone() == (1, localfleet.DATABASE)


@pytest.mark.slow
def test_postgres_restarts_on_its_folder_with_the_data_kept():
    require_servers("postgres")
    with server_folder() as folder:
        with localfleet.postgres(folder / "postgres", durable=False) as first:
            with psycopg.connect(first.url) as connection:
                connection.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        with localfleet.postgres(folder / "postgres", durable=False) as second:
            with psycopg.connect(second.url) as connection:
                assert connection.execute("SELECT n FROM kept").fetchall() == [(7,)]


@pytest.mark.slow
def test_each_test_gets_an_empty_database_of_its_own(postgres_url, fresh_database_url):
    assert fresh_database_url != postgres_url
    with psycopg.connect(fresh_database_url) as connection:
        tables = connection.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
        connection.execute("CREATE TABLE scratch (n int)")
    assert tables == 0


@pytest.mark.slow
def test_redis_starts_and_answers(redis_url, fresh_redis_url):
    with redis.Redis.from_url(redis_url) as shared, redis.Redis.from_url(fresh_redis_url) as fresh:
        assert shared.ping() and fresh.ping()
        assert fresh.dbsize() == 0
        fresh.set("only-here", "1")
        assert shared.get("only-here") is None


@pytest.mark.slow
def test_nginx_spreads_requests_over_the_replicas(proxy, echo_pair):
    answered_by = {requests.get(f"{proxy.url}/health", timeout=5).json()["server"] for _ in range(8)}
    assert answered_by == {"a", "b"}


@pytest.mark.slow
def test_nginx_keeps_the_clients_request_id_and_makes_one_when_absent(proxy, echo_pair):
    sent = requests.get(f"{proxy.url}/health", headers={"X-Request-ID": "client-chosen-42"}, timeout=5).json()
    made = [requests.get(f"{proxy.url}/health", timeout=5).json() for _ in range(2)]
    assert sent["request_id"] == "client-chosen-42"
    assert all(re.fullmatch(r"[0-9a-f]{32}", answer["request_id"]) for answer in made)
    assert made[0]["request_id"] != made[1]["request_id"]
    assert made[0]["forwarded_for"] == localfleet.LOOPBACK
    assert made[0]["host"] == localfleet.LOOPBACK
    assert f"request_id={made[1]['request_id']}" in access_log(proxy)[-1]


@pytest.mark.slow
@pytest.mark.parametrize("path", PREDICTIONS)
def test_a_prediction_a_replica_fails_is_answered_by_the_next(echo_pair, path):
    dead = f"http://{localfleet.LOOPBACK}:{localfleet.free_port()}"
    live = echo_pair[0]
    with nginx_in_front([dead, live.url]) as server:  # one nginx worker: round robin tries the dead one first
        response = requests.post(f"{server.url}{path}", data=b"image", timeout=10)
        tried = logged_upstreams(server, path)
    assert response.status_code == 200 and response.json()["server"] == live.name
    assert tried == f"{localfleet.host_port(dead)}, {localfleet.host_port(live.url)}"


@pytest.mark.slow
@pytest.mark.parametrize("path", STATE_CHANGES)
def test_a_state_change_is_never_sent_to_a_second_replica(echo_pair, path):
    dead = f"http://{localfleet.LOOPBACK}:{localfleet.free_port()}"
    live = echo_pair[0]
    with nginx_in_front([dead, live.url]) as server:
        response = requests.post(f"{server.url}{path}", data=b"job", timeout=10)
        tried = logged_upstreams(server, path)
    assert response.status_code == 502
    assert tried == localfleet.host_port(dead)
    assert live.seen == []


def default_max_upload_mb(monkeypatch) -> float:
    """Return the backend's MAX_UPLOAD_MB when the environment does not set it."""
    monkeypatch.delenv("MAX_UPLOAD_MB", raising=False)
    return Settings().max_upload_mb


def test_nginx_conf_limits_uploads_to_the_backends_default(monkeypatch):
    limits = re.findall(r"^\s*client_max_body_size\s+(\S+);", localfleet.NGINX_CONF.read_text(), re.M)
    assert limits == [localfleet.nginx_size(default_max_upload_mb(monkeypatch))] == ["16m"]


@pytest.mark.slow
def test_nginx_refuses_a_body_over_the_limit_and_passes_one_at_it(monkeypatch, echo_pair):
    limit = int(default_max_upload_mb(monkeypatch) * 1024 * 1024)
    with nginx_in_front([echo_pair[0].url]) as server:
        at_limit = requests.post(f"{server.url}/predict/batch", data=b"x" * limit, timeout=30)
        over = requests.post(f"{server.url}/predict/batch", data=b"x" * (limit + 1), timeout=30)
    assert at_limit.status_code == 200 and at_limit.json()["bytes"] == limit
    assert over.status_code == 413


@pytest.mark.slow
def test_nginx_reload_switches_upstreams(echo_pair):
    first, second = echo_pair
    with nginx_in_front([first.url]) as server:
        assert requests.get(f"{server.url}/health", timeout=5).json()["server"] == first.name
        server.reload([second.url])
        answered_by = {requests.get(f"{server.url}/health", timeout=5).json()["server"] for _ in range(4)}
    assert answered_by == {second.name}


def test_rendering_refuses_a_template_it_does_not_recognise(tmp_path):
    template = localfleet.NGINX_CONF.read_text().replace("listen 8080;", "")
    with pytest.raises(ValueError, match="listen"):
        localfleet.render_nginx_conf(tmp_path, ["127.0.0.1:5000"], 8081, template=template)


@pytest.mark.slow
def test_a_real_replica_and_dashboard_behind_nginx(tmp_path, mnist):
    from tests.support.datasets import png_bytes

    env = {"MODEL_DIR": str(REPO_ROOT / "models"), "DATA_DIR": str(tmp_path / "data"), "WEB_CONCURRENCY": "1"}
    with (
        localfleet.replica(env, log=tmp_path / "replica.log") as api,
        nginx_in_front([api.url]) as server,
        localfleet.dashboard(server.url, log=tmp_path / "dashboard.log") as board,
    ):
        ready = requests.get(f"{server.url}/ready", timeout=5)
        image = png_bytes(mnist.x_test[0])
        predicted = requests.post(
            f"{server.url}/predict", files={"file": ("d.png", image)}, headers={"X-Request-ID": "fleet-1"}, timeout=10
        )
        dashboard_health = requests.get(f"{board.url}/_stcore/health", timeout=5)
    assert ready.status_code == 200
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["digit"] == int(mnist.y_test[0])
    assert predicted.headers["X-Request-ID"] == "fleet-1"
    assert dashboard_health.status_code == 200


def test_compose_runs_the_fleets_commands():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert set(services) >= {"postgres", "redis", "api", "nginx", "trainer", "dashboard"}
    assert services["api"]["command"] == localfleet.command(localfleet.REPLICA_COMMAND, **COMPOSE_API)
    assert services["trainer"]["command"] == localfleet.command(localfleet.TRAINER_COMMAND)
    assert services["dashboard"]["command"] == localfleet.command(localfleet.DASHBOARD_COMMAND, **COMPOSE_DASHBOARD)
    for role in ("api", "trainer"):
        environment = services[role]["environment"]
        assert environment["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in environment["DATABASE_URL"]
        assert environment["REDIS_URL"].startswith("redis://redis:")
        assert {"MODEL_DIR", "DATA_DIR"} <= set(environment)
        assert services[role]["volumes"] == services["api"]["volumes"]
    assert services["dashboard"]["environment"]["BACKEND_URL"] == "http://nginx:8080"


def test_compose_scales_the_api_behind_nginx_with_this_config():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    conf = localfleet.NGINX_CONF.read_text()
    assert "ports" not in services["api"], "a fixed host port would stop `--scale api=N`"
    assert services["api"]["deploy"]["replicas"] >= 2
    source, target, *_ = services["nginx"]["volumes"][0].split(":")
    assert (COMPOSE.parent / source).resolve() == localfleet.NGINX_CONF and target == "/etc/nginx/nginx.conf"
    assert re.search(rf"^\s*server\s+api:{COMPOSE_API['port']}\b", conf, re.M)
    listen = re.search(r"^\s*listen\s+(\d+);", conf, re.M)[1]
    assert services["nginx"]["ports"] == [f"{listen}:{listen}"]


def test_the_image_defaults_to_the_api_replica():
    cmd = re.search(r"^CMD\s+(\[.*\])\s*$", DOCKERFILE.read_text(), re.M)[1]
    assert json.loads(cmd) == localfleet.command(localfleet.REPLICA_COMMAND, **COMPOSE_API)
    assert re.search(r"^FROM python:3\.11-slim\b", DOCKERFILE.read_text(), re.M)


def test_nginx_retries_only_predictions():
    conf = localfleet.NGINX_CONF.read_text()
    locations = dict(re.findall(r"^\s*location\s+(.+?)\s*\{(.*?)^\s*\}", conf, re.M | re.S))
    retried = [key for key, body in locations.items() if "non_idempotent" in body]
    assert len(retried) == 1 and retried[0].startswith("~ ")
    assert re.search(r"proxy_next_upstream\s+off;", locations["/"])
    assert len(locations) == 2, "every location but the predictions' must say proxy_next_upstream off"
    pattern = retried[0][2:]
    assert all(re.match(pattern, path) for path in PREDICTIONS)
    assert not any(re.match(pattern, path) for path in [*STATE_CHANGES, "/jobs", "/models", "/fleet", "/ready"])


def run_localfleet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m deploy.localfleet ARGS` from the repository."""
    return subprocess.run(
        [sys.executable, "-m", "deploy.localfleet", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_localfleet_help_and_dry_run_start_nothing(tmp_path):
    helped = run_localfleet("--help")
    assert helped.returncode == 0, helped.stderr
    for option in ("--replicas", "--workers", "--port", "--dashboard-port", "--dry-run"):
        assert option in helped.stdout
    planned = run_localfleet("--dry-run", "--replicas", "3", env={"DATA_DIR": str(tmp_path / "data")})
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout.count("-m gunicorn -c backend/gunicorn.conf.py") == 3
    for template in (localfleet.TRAINER_COMMAND, localfleet.DASHBOARD_COMMAND):
        assert " ".join(localfleet.command(template, host="127.0.0.1", port=8501)[1:]) in planned.stdout
    assert not (tmp_path / "data").exists(), "--dry-run must not create anything"


def test_missing_binaries_names_every_server_a_bare_machine_lacks(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(localfleet, "POSTGRES_BIN_GLOB", "/nonexistent/*/bin")
    monkeypatch.setattr(localfleet, "SBIN_DIRS", ())
    assert localfleet.missing_binaries() == ["postgres", "redis-server", "nginx"]
