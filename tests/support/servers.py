"""Start real gunicorn servers on loopback for tests and benchmarks, stop them cleanly, and read their /proc figures."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from backend.core.config import REPO_ROOT
from deploy.localfleet import free_port

GUNICORN_CONFIG = REPO_ROOT / "backend" / "gunicorn.conf.py"


def wait_until_up(url: str, seconds: float = 60, process: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers (any status), or fail."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before answering {url}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {seconds} s")


def worker_pids(master_pid: int) -> list[int]:
    """Return the pids of a gunicorn master's worker processes."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def peak_rss_mb(pid: int) -> float:
    """Return a process's peak resident memory (VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) a process has used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15 of proc(5)


def context_switches(pid: int) -> int:
    """Return how many times a process's threads have been switched off a core so far (voluntarily or not)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


@contextlib.contextmanager
def gunicorn(
    app: str = "backend.wsgi:app",
    env: dict[str, str] | None = None,
    workers: int | None = None,
    log_path: Path | None = None,
    extra_args: list[str] | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `gunicorn -c backend/gunicorn.conf.py <app>` on a loopback port (free by default); yield (URL, process)."""
    port = port or free_port()
    command = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONFIG), "--bind", f"{host}:{port}"]
    if workers:
        command += ["--workers", str(workers)]
    command += [*(extra_args or []), app]
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=log)
    url = f"http://{host}:{port}"
    try:
        wait_until_up(f"{url}/health", process=process)
        yield url, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_path:
            log.close()
