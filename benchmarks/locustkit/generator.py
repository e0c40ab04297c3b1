"""The load generator's own CPU: sample the Locust processes during a run and tell when one of them was the limit.

A Locust process runs its users on one core (gevent), so one near 100% of a core caps the request rate whatever
the server could do, and the run measures the client. benchmarks/loadtest.py samples the Locust process it starts
and, with --processes, its worker children, and writes the samples to PREFIX_generator_cpu.csv; the summary and
the plot read them back. Workers on other hosts are not sampled: Locust's master logs their CPU warnings.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from benchmarks.locustkit.records import (
    GENERATOR_COLUMNS,
    GENERATOR_CSV,
    HISTORY_CSV,
    number,
    read_csv,
    run_file,
    write_csv,
)

SATURATION_SHARE = 0.90  # a Locust process busier than this share of one core is the bottleneck
WINDOW_SECONDS = 5.0  # it must stay that busy this long: a busy second (a GC pass, a spawn burst) is not saturation
SAMPLE_SECONDS = 0.5


class CpuSampler:
    """Samples the CPU time of a Locust process and its worker children in a thread, while in a `with` block."""

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS) -> None:
        """Prepare to sample the process `pid` and its children every `interval` seconds."""
        self.root = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int, float]] = []  # (epoch seconds, pid, user + system CPU seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="generator-cpu", daemon=True)

    def __enter__(self) -> CpuSampler:
        """Start sampling."""
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        """Take a sample every interval until stopped."""
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        """Record the CPU time so far of the process and each of its children."""
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return  # Locust has exited
        now = time.time()
        for process in processes:
            try:
                times = process.cpu_times()  # this process only: children_* counts the ones it reaped
            except psutil.Error:
                continue
            self.samples.append((now, process.pid, times.user + times.system))

    def rows(self) -> list[dict[str, Any]]:
        """Return the samples as rows; the root is "master" when it had workers, else "locust"."""
        pids = {pid for _, pid, _ in self.samples}
        root_role = "master" if pids - {self.root.pid} else "locust"
        return [
            {
                "timestamp": round(when, 3),
                "pid": pid,
                "role": root_role if pid == self.root.pid else "worker",
                "cpu_seconds": round(seconds, 3),
            }
            for when, pid, seconds in self.samples
        ]

    def write(self, prefix: str | Path) -> None:
        """Write the samples to the run's generator CSV."""
        write_csv(run_file(prefix, GENERATOR_CSV), self.rows(), GENERATOR_COLUMNS)


def per_process(rows: list[dict[str, str]]) -> dict[tuple[int, str], list[tuple[float, float]]]:
    """Group sample rows by (pid, role) into time-ordered (epoch seconds, CPU seconds) pairs."""
    series: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for row in rows:
        series.setdefault((int(row["pid"]), row["role"]), []).append(
            (number(row["timestamp"]), number(row["cpu_seconds"]))
        )
    return {key: sorted(samples) for key, samples in series.items()}


def share(samples: list[tuple[float, float]], i: int, j: int) -> float:
    """Return the share of one core used between samples i and j."""
    (t0, c0), (t1, c1) = samples[i], samples[j]
    return (c1 - c0) / (t1 - t0) if t1 > t0 else math.nan


def busiest_share(samples: list[tuple[float, float]], window: float = WINDOW_SECONDS) -> float:
    """Return the highest share of one core over any span of at least `window` seconds (or the whole span)."""
    shares, j = [share(samples, 0, len(samples) - 1)], 0  # the whole run is such a span too
    for i in range(len(samples)):
        while j < len(samples) and samples[j][0] - samples[i][0] < window:
            j += 1
        if j == len(samples):
            break
        shares.append(share(samples, i, j))
    return max(shares)


def generator_summary(prefix: str | Path, requests: float = math.nan) -> dict[str, Any]:
    """Summarise the generator's CPU over the run (first to last stats-history row), and per request if given."""
    history = read_csv(run_file(prefix, HISTORY_CSV))
    start = number(history[0]["Timestamp"]) if history else -math.inf
    end = number(history[-1]["Timestamp"]) + 1 if history else math.inf  # whole-second stamps
    processes = []
    for (pid, role), samples in per_process(read_csv(run_file(prefix, GENERATOR_CSV))).items():
        inside = [sample for sample in samples if start <= sample[0] <= end]
        if len(inside) < 2:
            continue
        busiest = busiest_share(inside)
        processes.append(
            {
                "pid": pid,
                "role": role,
                "cpu_seconds": round(inside[-1][1] - inside[0][1], 2),
                "mean_share": round(share(inside, 0, len(inside) - 1), 3),
                "busiest_share": round(busiest, 3),
                "saturated": busiest > SATURATION_SHARE,
            }
        )
    processes.sort(key=lambda row: (row["role"] == "worker", row["pid"]))  # the master or lone process first
    cpu_seconds = sum(row["cpu_seconds"] for row in processes)
    return {
        "cpu_ms_per_request": round(1000 * cpu_seconds / requests, 3) if processes and requests else math.nan,
        "threshold_share": SATURATION_SHARE,
        "window_s": WINDOW_SECONDS,
        "processes": processes,
        "saturated": any(row["saturated"] for row in processes),
    }


def describe_generator(summary: dict[str, Any]) -> str:
    """One line: each Locust process's share of a core, and whether the generator was saturated."""
    processes = summary["processes"]
    if not processes:
        return "generator CPU: not measured (no samples during the run)"
    shares = ", ".join(
        f"{row['role']} {row['pid']} {row['mean_share']:.0%} / {row['busiest_share']:.0%}" for row in processes
    )
    head = f"generator CPU (share of one core, run mean / busiest {summary['window_s']:.0f} s): {shares}"
    if not math.isnan(summary["cpu_ms_per_request"]):
        head += f", {summary['cpu_ms_per_request']:.2f} ms of CPU per request"
    if summary["saturated"]:
        return (
            f"{head}; generator saturated: a Locust process was above {summary['threshold_share']:.0%} of a core, "
            "so the figures above are the client's limit (add --processes where cores are free)"
        )
    return f"{head}; generator not saturated (below {summary['threshold_share']:.0%} of a core)"
