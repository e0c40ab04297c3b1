"""The gunicorn worker class (a busy worker leaves new connections to the other, fair under saturation) and config."""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from collections import Counter
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

import pytest
import requests
from gunicorn.config import Config
from gunicorn.workers.gthread import ThreadWorker

from backend.web.gunicorn_worker import IdleThreadWorker
from benchmarks import saturation
from tests.support.browser import in_ci
from tests.support.servers import gunicorn, worker_pids

THREADS = 4
CLIENTS = 2 * THREADS  # as many as both workers have threads


def socket_inode(server_port: int, client_port: int) -> int:
    """Return the inode of the server-side socket of a loopback TCP connection, from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if (local_port, remote_port) == (server_port, client_port):
            return int(fields[9])
    raise LookupError(f"no server socket for client port {client_port}")


def holder(pids: list[int], inode: int) -> int:
    """Return the pid of the worker that holds the socket with this inode."""
    target = f"socket:[{inode}]"
    for pid in pids:
        if any(os.readlink(fd) == target for fd in Path(f"/proc/{pid}/fd").iterdir() if fd.is_symlink()):
            return pid
    raise LookupError(f"no worker holds {target}")


def accepted_by(pids: list[int], port: int, connection: socket.socket) -> int | None:
    """Return the pid of the worker that accepted this client connection, or None while none has."""
    try:
        return holder(pids, socket_inode(port, connection.getsockname()[1]))
    except LookupError:
        return None


@pytest.mark.slow
def test_a_worker_with_every_thread_busy_leaves_new_connections_to_the_other():
    with gunicorn("benchmarks.bare_app:app", workers=2, extra_args=["--threads", str(THREADS)]) as (url, master):
        port = urlparse(url).port
        deadline = time.monotonic() + 30
        while len(worker_pids(master.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = worker_pids(master.pid)
        clients = []
        for _ in range(CLIENTS):  # each holds a thread: its worker waits for the rest of the head
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            client.sendall(b"GET /health HTTP/1.1\r\n")
            clients.append(client)
        deadline = time.monotonic() + 30
        while None in (held := [accepted_by(pids, port, c) for c in clients]) and time.monotonic() < deadline:
            time.sleep(0.05)
        for client in clients:
            client.sendall(b"Host: test\r\n\r\n")
            assert read_response_head(client).startswith("http/1.1 200")
            client.close()
    # a plain gthread worker takes all eight; this one takes at most one per thread
    assert sorted(Counter(held).values()) == [THREADS, THREADS], held


def test_a_worker_with_every_thread_busy_stops_accepting():
    config = Config()
    config.set("threads", 2)
    worker = IdleThreadWorker(0, os.getpid(), [], None, 30, config, mock.Mock())
    worker.tpool, worker.method_queue = mock.Mock(), mock.Mock()
    limit = config.worker_connections
    assert worker.worker_connections == limit
    worker.enqueue_req(mock.Mock())
    assert worker.worker_connections == limit  # one thread still free
    worker.enqueue_req(mock.Mock())
    assert worker.worker_connections == 0  # ThreadWorker.run() stops accepting: nr_conns < 0 is false
    with mock.patch.object(ThreadWorker, "finish_request") as gthread_finish:
        worker.finish_request("connection", "future")
    gthread_finish.assert_called_once_with("connection", "future")
    assert worker.worker_connections == limit


@pytest.mark.slow
def test_the_metrics_folder_gunicorn_made_is_removed_at_exit(tmp_path, monkeypatch):
    for name in ("PROMETHEUS_MULTIPROC_DIR", "DIGITLAB_OWN_METRICS_DIR"):
        monkeypatch.delenv(name, raising=False)
    with gunicorn("benchmarks.bare_app:app", env={"TMPDIR": str(tmp_path)}, workers=1):
        made = list(tmp_path.glob("digitlab-metrics-*"))
        assert len(made) == 1 and made[0].is_dir()
    assert not made[0].exists()


@pytest.mark.slow
def test_a_given_metrics_folder_is_kept_and_none_is_made(tmp_path, monkeypatch):
    given = tmp_path / "metrics"
    given.mkdir()
    monkeypatch.delenv("DIGITLAB_OWN_METRICS_DIR", raising=False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(given))
    with gunicorn("benchmarks.bare_app:app", env={"TMPDIR": str(tmp_path)}, workers=1) as (url, _):
        assert requests.get(f"{url}/health", timeout=10).ok
    assert given.is_dir()
    assert list(tmp_path.glob("digitlab-metrics-*")) == []


def send_request(connection: socket.socket) -> None:
    """Send a keep-alive GET /health on a raw socket."""
    connection.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")


def read_response_head(connection: socket.socket) -> str:
    """Read one small response (headers and a body of Content-Length bytes); return its head, lower-cased."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))
    while len(body) < length:
        body += connection.recv(4096)
    return head.decode().lower()


@pytest.mark.slow
def test_under_saturation_a_response_closes_its_connection_so_the_waiting_client_gets_in():
    with gunicorn("benchmarks.bare_app:app", workers=1, extra_args=["--threads", "1"]) as (url, _):
        address = ("127.0.0.1", urlparse(url).port)
        kept = socket.create_connection(address, timeout=10)
        send_request(kept)
        assert "connection: close" not in read_response_head(kept)  # nobody waits: kept alive

        blocker = socket.create_connection(address, timeout=10)
        blocker.sendall(b"GET /health HTTP/1.1\r\n")  # the worker's only thread now waits for the rest of the head
        time.sleep(0.5)  # ordering only: the worker has taken `blocker` and stopped accepting
        waiting = socket.create_connection(address, timeout=10)  # stays in the listen backlog
        send_request(waiting)
        send_request(kept)  # queued behind `blocker`, not gated by accept
        time.sleep(0.5)  # ordering only: the worker has queued `kept` before the thread frees
        blocker.sendall(b"Host: test\r\n\r\n")
        # both are answered while `waiting` waits, so both go back to the end of the accept queue
        for connection in (blocker, kept):
            assert "connection: close" in read_response_head(connection)
            connection.close()  # as a client does on "Connection: close"; gunicorn lingers for it (close_graceful)
        assert read_response_head(waiting).startswith("http/1.1 200")
        waiting.close()


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("wrk") is None and not in_ci(), reason="the benchmark drives wrk (apt-get install wrk)"
)
def test_saturation_benchmark_runs_and_reports_the_bar(capsys):
    assert saturation.main(["--seconds", "1", "--warm-up", "0", "--connections", "2", "4"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+[24] ", line)]
    assert [int(row[0]) for row in rows] == [2, 4] and all(float(row[1]) > 0 for row in rows)
    assert "4-client p99" in out and "req/s 4 / 2 clients" in out
