"""What a run records besides Locust's own stats, and the files it leaves next to Locust's CSVs.

With `--csv PREFIX`: PREFIX_model_versions.csv (first and last time each model version answered: the swap
moment), PREFIX_jobs.csv (the AdminUser's job, one row per status change), and exact per-step
(PREFIX_steps.csv) or per-retrain-phase (PREFIX_phases.csv) figures. Locust's history only has 10 s window
percentiles, too coarse to tell a load step or a retrain phase from its neighbours.
In distributed mode each worker keeps its own record and sends it to the master, which merges and writes them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.locustkit import log

VERSIONS_CSV = "model_versions.csv"
VERSION_COLUMNS = ["version", "first_seen", "last_seen", "responses"]
JOBS_CSV = "jobs.csv"
JOB_COLUMNS = ["timestamp", "job_id", "status", "progress", "detail"]
STEPS_CSV = "steps.csv"
PHASES_CSV = "phases.csv"
FINAL_JSON = "final.json"  # final per-request figures, written by the gate
GENERATOR_CSV = "generator_cpu.csv"  # the Locust processes' CPU time, sampled by benchmarks/loadtest.py
GENERATOR_COLUMNS = ["timestamp", "pid", "role", "cpu_seconds"]
HISTORY_CSV = "stats_history.csv"  # Locust's own, with --csv-full-history
PREDICT_PREFIX = "/predict ["  # PredictUser names its requests "/predict [<style>]"
PHASE_BEFORE = "1 before job"  # from the test's start when an AdminUser runs
PHASE_RUNNING = "2 job running (train, gate, swap)"


def predict_name(style: str) -> str:
    """Name a /predict request by its sample's style, so each style gets its own row in the stats."""
    return f"{PREDICT_PREFIX}{style}]"


def phase_after(how: str) -> str:
    """Name the phase after the job, by how it ended."""
    return f"3 after job ({how})"


def run_file(prefix: str | Path, name: str) -> Path:
    """Return the path of one of a run's files for Locust's --csv prefix."""
    return Path(f"{prefix}_{name}")


def write_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary file and a rename, so no reader sees half of it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Write rows as a CSV file with a header."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    """Read a CSV file as dicts ([] when it does not exist)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def number(text: Any) -> float:
    """Parse a CSV cell as float; "N/A" and blanks become NaN."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def history_start(prefix: str | Path) -> float:
    """Return the epoch second of the first stats-history row: time zero of a run's plot and summary."""
    rows = read_csv(run_file(prefix, HISTORY_CSV))
    return number(rows[0]["Timestamp"]) if rows else math.nan


def percentile(sorted_values: list[float], share: float) -> float:
    """Return the nearest-rank percentile of already sorted values (NaN when empty)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(share * len(sorted_values)) - 1))]


class VersionLog:
    """First and last time each model version was seen in a prediction: the swap is visible here."""

    def __init__(self) -> None:
        """Start with no versions seen."""
        self.versions: dict[str, list] = {}  # version -> [first_seen, last_seen, responses]

    def saw(self, version: str, when: float) -> None:
        """Record that a prediction was served by `version` at epoch time `when`."""
        row = self.versions.get(version)
        if row is None:
            if self.versions:
                log.info("model swap seen: now serving %s (before: %s)", version, ", ".join(self.versions))
            self.versions[version] = [when, when, 1]
        else:
            row[1] = max(row[1], when)
            row[2] += 1

    def merge(self, version: str, first: float, last: float, responses: int) -> None:
        """Add another process's sightings of `version`."""
        row = self.versions.setdefault(version, [first, last, 0])
        row[0], row[1], row[2] = min(row[0], first), max(row[1], last), row[2] + responses

    def rows(self) -> list[dict[str, Any]]:
        """Return one row per version, in order of first appearance."""
        ordered = sorted(self.versions.items(), key=lambda item: item[1][0])
        return [{"version": v, "first_seen": f, "last_seen": last, "responses": n} for v, (f, last, n) in ordered]

    def reset(self) -> None:
        """Forget everything (a new test started)."""
        self.versions.clear()


class Buckets:
    """Response times and failures grouped by a key (a load step, a retrain phase)."""

    def __init__(self) -> None:
        """Start with no groups."""
        self.groups: dict[Any, dict[str, Any]] = {}

    def add(self, key: Any, users: int, response_time: float, failed: bool, now: float) -> None:
        """Count one request under `key`."""
        group = self.groups.setdefault(key, {"users": users, "times": [], "failures": 0, "first": now, "last": now})
        group["users"] = max(group["users"], users)
        group["times"].append(response_time)
        group["failures"] += failed
        group["last"] = now

    def merge(self, groups: list[list[Any]]) -> None:
        """Add another process's groups: its users and requests add to ours, the time span widens."""
        for key, other in groups:
            group = self.groups.get(key)
            if group is None:
                self.groups[key] = {**other, "times": list(other["times"])}
                continue
            group["users"] += other["users"]  # each worker runs its own share of the users
            group["times"].extend(other["times"])
            group["failures"] += other["failures"]
            group["first"], group["last"] = min(group["first"], other["first"]), max(group["last"], other["last"])

    def rows(self, key_name: str) -> list[dict[str, Any]]:
        """Summarise each group: users, requests, req/s, p50/p95/p99 ms and failures."""
        rows = []
        for key, group in sorted(self.groups.items()):
            times = sorted(group["times"])
            seconds = max(group["last"] - group["first"], 1e-9)
            rows.append(
                {
                    key_name: key,
                    "users": group["users"],
                    "requests": len(times),
                    "failures": group["failures"],
                    "seconds": round(seconds, 2),
                    "requests_per_s": round(len(times) / seconds, 2),
                    "p50_ms": round(percentile(times, 0.50), 2),
                    "p95_ms": round(percentile(times, 0.95), 2),
                    "p99_ms": round(percentile(times, 0.99), 2),
                }
            )
        return rows


@dataclass
class RunRecord:
    """The model-version timeline, the job's status changes, and per-step and per-phase figures of one run."""

    versions: VersionLog = field(default_factory=VersionLog)
    job_events: list[dict[str, Any]] = field(default_factory=list)
    steps: Buckets = field(default_factory=Buckets)  # step number -> figures, when the step shape runs
    phases: Buckets = field(default_factory=Buckets)  # retrain phase -> /predict figures, when an AdminUser runs
    phase: str | None = None  # the retrain phase that /predict requests now belong to

    def note_job(self, job_id: str | None, status: str, body: dict[str, Any]) -> None:
        """Record a job status change with its time."""
        detail = body.get("result") or body.get("error") or body.get("dataset") or body.get("active") or ""
        self.job_events.append(
            {
                "timestamp": time.time(),
                "job_id": job_id,
                "status": status,
                "progress": body.get("progress", ""),
                "detail": json.dumps(detail) if detail else "",
            }
        )
        log.info("job %s: %s %s", job_id, status, json.dumps(detail)[:300] if detail else "")

    def export(self) -> dict[str, Any]:
        """Return the record as plain lists and dicts: what a worker sends to the master."""
        return {
            "versions": [[version, *row] for version, row in self.versions.versions.items()],
            "job_events": self.job_events,
            "steps": [[key, group] for key, group in self.steps.groups.items()],
            "phases": [[key, group] for key, group in self.phases.groups.items()],
        }

    def merge(self, data: dict[str, Any]) -> None:
        """Add a worker's exported record to this one."""
        for version, first, last, responses in data["versions"]:
            self.versions.merge(version, first, last, responses)
        self.job_events[:] = sorted([*self.job_events, *data["job_events"]], key=lambda event: event["timestamp"])
        self.steps.merge(data["steps"])
        self.phases.merge(data["phases"])

    def reset(self) -> None:
        """Forget everything (a new test started)."""
        self.versions.reset()
        self.job_events.clear()
        self.steps.groups.clear()
        self.phases.groups.clear()
        self.phase = None

    def write(self, prefix: str | Path) -> None:
        """Write the model-version, job, step and phase files for Locust's --csv prefix."""
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        write_csv(run_file(prefix, VERSIONS_CSV), self.versions.rows(), VERSION_COLUMNS)
        write_csv(run_file(prefix, JOBS_CSV), self.job_events, JOB_COLUMNS)
        for buckets, key, name in ((self.steps, "step", STEPS_CSV), (self.phases, "phase", PHASES_CSV)):
            rows = buckets.rows(key)
            if rows:
                write_csv(run_file(prefix, name), rows, list(rows[0]))


RUN = RunRecord()  # the locust process's one run: users add to it, the hooks reset and write it
