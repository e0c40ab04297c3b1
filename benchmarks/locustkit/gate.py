"""The pass/fail gate: a non-zero exit code when the failure ratio or the aggregated p95 is over its bound."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from benchmarks.locustkit import log
from benchmarks.locustkit.records import FINAL_JSON, run_file, write_atomic
from benchmarks.locustkit.settings import env_bound

if TYPE_CHECKING:
    from locust.env import Environment

DEFAULT_MAX_FAIL_RATIO = 0.01  # LOCUST_MAX_FAIL_RATIO
DEFAULT_MAX_P95_MS = 1000.0  # LOCUST_MAX_P95_MS; 0 or "off" disables it


def gate_problems(
    fail_ratio: float, p95_ms: float, requests: int, max_fail_ratio: float | None, max_p95_ms: float | None
) -> list[str]:
    """List the thresholds a run broke (empty when it passed)."""
    problems = []
    if requests == 0:
        problems.append("no requests were made")
    if max_fail_ratio is not None and fail_ratio > max_fail_ratio:
        problems.append(f"failure ratio {fail_ratio:.2%} is above {max_fail_ratio:.2%} (LOCUST_MAX_FAIL_RATIO)")
    if max_p95_ms is not None and p95_ms > max_p95_ms:
        problems.append(f"p95 {p95_ms:.0f} ms is above {max_p95_ms:.0f} ms (LOCUST_MAX_P95_MS)")
    return problems


def final_stats(environment: Environment) -> dict[str, dict[str, float]]:
    """Return the final figures per request name and "Aggregated": count, failures, req/s, p50/p95/p99 ms."""
    entries = {f"{e.method} {e.name}": e for e in environment.stats.entries.values()}
    entries["Aggregated"] = environment.stats.total
    return {
        key: {
            "name": entry.name,
            "requests": entry.num_requests,
            "failures": entry.num_failures,
            "requests_per_s": round(entry.total_rps, 3),
            **{f"p{int(q * 100)}_ms": entry.get_response_time_percentile(q) or 0.0 for q in (0.5, 0.95, 0.99)},
        }
        for key, entry in entries.items()
    }


def judge(environment: Environment, prefix: str | None) -> None:
    """Save the final figures (with --csv) and set the process exit code from the gate."""
    # Locust's CSVs are rewritten every second and can miss the last one; these figures are final.
    if prefix:
        write_atomic(run_file(prefix, FINAL_JSON), json.dumps(final_stats(environment), indent=1) + "\n")
    total = environment.stats.total
    problems = gate_problems(
        total.fail_ratio,
        total.get_response_time_percentile(0.95) or 0.0,
        total.num_requests,
        env_bound("LOCUST_MAX_FAIL_RATIO", DEFAULT_MAX_FAIL_RATIO),
        env_bound("LOCUST_MAX_P95_MS", DEFAULT_MAX_P95_MS),
    )
    for problem in problems:
        log.error("load test failed: %s", problem)
    environment.process_exit_code = 1 if problems else 0
