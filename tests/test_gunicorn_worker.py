"""The gunicorn worker class: kept-alive clients spread over the workers instead of piling onto one."""

from __future__ import annotations

import http.client
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

from gunicorn.config import Config
from gunicorn.workers.gthread import ThreadWorker

from backend.gunicorn_worker import IdleThreadWorker
from benchmarks.servers import gunicorn, worker_pids

CLIENTS = 8


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


def test_kept_alive_clients_spread_over_workers():
    with gunicorn("benchmarks.bare_app:app", workers=2, extra_args=["--threads", "1"]) as (url, master):
        port = urlparse(url).port
        deadline = time.monotonic() + 30
        while len(worker_pids(master.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # both workers have loaded the app and are accepting

        def open_and_ask(_: int) -> http.client.HTTPConnection:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for _ in range(5):
                connection.request("GET", "/health")
                assert connection.getresponse().read()
            return connection

        with ThreadPoolExecutor(CLIENTS) as pool:  # all at once, as a load generator or a proxy's pool connects
            connections = list(pool.map(open_and_ask, range(CLIENTS)))
        pids = worker_pids(master.pid)
        held = Counter(holder(pids, socket_inode(port, c.sock.getsockname()[1])) for c in connections)
        for connection in connections:
            connection.close()
    assert len(held) == 2 and min(held.values()) >= 2, held


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
