"""The load-test figure: requests/s, p50/p95/p99, users and the generator's CPU over time, job and swaps marked.

Drawn from the files a Locust run leaves for its --csv prefix (see benchmarks/locustkit/records.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.locustkit.checks import FINISHED
from benchmarks.locustkit.generator import SATURATION_SHARE, per_process, share
from benchmarks.locustkit.records import (
    GENERATOR_CSV,
    HISTORY_CSV,
    JOBS_CSV,
    VERSIONS_CSV,
    history_start,
    number,
    read_csv,
    run_file,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

LOG_SCALE_SPREAD = 30  # a log latency axis only when p99 is this many times p50, else p50 lies flat on the floor


def plot(prefix: Path, title: str, path: Path) -> Path:
    """Draw the run behind Locust's --csv `prefix` into the PNG `path`; return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = run_file(prefix, HISTORY_CSV)
    rows = [row for row in read_csv(history) if row["Name"] == "Aggregated"]
    if not rows:
        raise RuntimeError(f"no Aggregated rows in {history}: did Locust run?")
    t0 = history_start(prefix)
    t = [number(row["Timestamp"]) - t0 for row in rows]
    fig, (ax_rps, ax_lat, ax_users, ax_cpu) = plt.subplots(
        4, 1, figsize=(13, 10.5), sharex=True, gridspec_kw={"height_ratios": [3, 3, 1.6, 2]}
    )
    cpu = per_process(read_csv(run_file(prefix, GENERATOR_CSV)))
    # Per-second rates from the cumulative counts: Locust's own Requests/s column lags by seconds,
    # which would smear a dip at the swap. A master only learns the counts when workers report (every
    # few seconds), so there the rates run from one report to the next.
    reported = reports(rows) if any(role == "master" for _, role in cpu) else rows
    t_rate = [number(row["Timestamp"]) - t0 for row in reported]
    for column, colour, label in (
        ("Total Request Count", "tab:blue", "requests/s"),
        ("Total Failure Count", "tab:red", "failures/s"),
    ):
        ax_rps.plot(t_rate[1:], per_second(t_rate, [number(r[column]) for r in reported]), color=colour, label=label)
    ax_rps.set_ylabel("requests/s")
    latencies = {}
    for key, colour in (("50%", "tab:green"), ("95%", "tab:orange"), ("99%", "tab:red")):
        latencies[key] = [number(r[key]) or math.nan for r in rows]  # 0 means "no requests yet": a gap
        ax_lat.plot(t, latencies[key], color=colour, label=f"p{key[:-1]}")
    ax_lat.set_ylabel("latency, ms (last 10 s)")
    low, high = min(latencies["50%"], key=_nan_high), max(latencies["99%"], key=_nan_low)
    if low > 0 and high / low > LOG_SCALE_SPREAD:
        ax_lat.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax_lat.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax_lat.yaxis.set_major_formatter(plain)
        ax_lat.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    else:
        ax_lat.set_ylim(bottom=0)
    ax_users.step(t, [number(r["User Count"]) for r in rows], where="post", color="tab:purple", label="users")
    ax_users.set_ylabel("users")
    _generator_cpu(cpu, t0, ax_cpu)
    ax_cpu.set_xlabel("seconds since start")

    axes = (ax_rps, ax_lat, ax_users, ax_cpu)
    _mark_job(prefix, t0, axes)
    _mark_swaps(prefix, t0, axes)
    for axis in axes:
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)  # outside the data
    ax_rps.set_ylim(bottom=0)
    ax_users.set_ylim(bottom=0)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reports(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Keep the first history row and each one whose request count changed: the moments workers reported."""
    counts = [row["Total Request Count"] for row in rows]
    return [row for i, row in enumerate(rows) if i == 0 or counts[i] != counts[i - 1]]


def _generator_cpu(cpu: dict[tuple[int, str], list[tuple[float, float]]], t0: float, axis: Axes) -> None:
    """Draw each Locust process's share of one core between samples from time zero on, and the saturation line."""
    for (pid, role), every in cpu.items():
        samples = [sample for sample in every if sample[0] >= t0]  # not the start-up before the first user
        t = [when - t0 for when, _ in samples[1:]]
        axis.plot(t, [100 * share(samples, i, i + 1) for i in range(len(t))], linewidth=1, label=f"{role} {pid}")
    axis.axhline(100 * SATURATION_SHARE, color="tab:red", linestyle=":", linewidth=1, label="saturated above")
    axis.set_ylabel("generator CPU,\n% of one core")
    axis.set_ylim(0, 110)


def per_second(t: list[float], cumulative: list[float]) -> list[float]:
    """Turn cumulative counts sampled at times t into a rate per second between samples."""
    return [
        (c1 - c0) / (t1 - t0) if t1 > t0 else math.nan for t0, t1, c0, c1 in zip(t, t[1:], cumulative, cumulative[1:])
    ]


def _nan_high(value: float) -> float:
    """Sort key that puts NaN above everything (for min)."""
    return math.inf if math.isnan(value) else value


def _nan_low(value: float) -> float:
    """Sort key that puts NaN below everything (for max)."""
    return -math.inf if math.isnan(value) else value


def _mark_job(prefix: Path, t0: float, axes: tuple) -> None:
    """Shade the time the AdminUser's job was queued or running."""
    events = read_csv(run_file(prefix, JOBS_CSV))
    if not events:
        return
    start = number(events[0]["timestamp"]) - t0
    # Statuses the load test adds ("cancelled by the load test") start with the job's own.
    ended = [(number(e["timestamp"]) - t0, e["status"]) for e in events if e["status"].split()[0] in FINISHED]
    end, final = ended[0] if ended else (axes[0].get_xlim()[1], events[-1]["status"])
    for i, axis in enumerate(axes):
        axis.axvspan(start, end, color="tab:orange", alpha=0.12, label=f"training job ({final})" if i == 0 else None)


def _mark_swaps(prefix: Path, t0: float, axes: tuple) -> None:
    """Draw a line where each new model version was first served, shading overlap with the old one."""
    versions = read_csv(run_file(prefix, VERSIONS_CSV))
    for before, after in zip(versions, versions[1:]):
        swap = number(after["first_seen"]) - t0
        overlap_end = number(before["last_seen"]) - t0
        for i, axis in enumerate(axes):
            axis.axvline(
                swap,
                color="black",
                linestyle="--",
                linewidth=1.2,
                label=f"model swap to\n{after['version']}" if i == 0 else None,
            )
            if i == 0:
                axis.annotate(" swap", (swap, 1.0), xycoords=("data", "axes fraction"), va="top", fontsize=9)
            if overlap_end > swap:
                axis.axvspan(
                    swap, overlap_end, color="grey", alpha=0.25, label="old and new both served" if i == 0 else None
                )
