"""One-command load test: `python -m benchmarks.loadtest --users 20 --spawn-rate 10 --run-time 30s`.

Starts the real gunicorn backend if nothing answers at --host, runs Locust headless with
locustfile.py, and writes reports/loadtest-<timestamp>/:
  locust_stats.csv, locust_stats_history.csv (full history), locust_failures.csv, ...  Locust's CSVs
  report.html                    Locust's HTML report
  locust_final.json              final per-request figures (the summary's source)
  locust_model_versions.csv      when each model version was first/last seen in predictions
  locust_jobs.csv                the AdminUser's job timeline (retrain scenarios)
  locust_steps.csv               exact per-step figures (step scenario)
  locust_phases.csv              exact /predict figures before, during and after the job (retrain scenarios)
  locust_generator_cpu.csv       the Locust processes' CPU time, sampled every 0.5 s
  loadtest.png                   requests/s, p50/p95/p99, users and the generator's CPU over time, model
                                 swaps marked (drawn by benchmarks/loadtest_plot.py)
  summary.json                   the headline figures printed at the end
Scenarios: mixed (Predict+Batch+Dashboard), predict, step (StepLoadShape, to find the knee),
retrain and upload (PredictUser + DashboardUser + AdminUser: serving during a retrain and swap).
One Locust process uses at most one core: --processes N runs a master and N local workers (Locust's
distributed mode), and the summary says when a Locust process was saturated (benchmarks/locustkit/generator.py).
Only loopback hosts are accepted: the script may start and stop the backend it measures.
The exit code is Locust's: non-zero when the failure ratio or p95 broke its bound.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil

from backend.core.config import REPO_ROOT
from benchmarks.loadtest_plot import plot
from benchmarks.locustkit.gate import DEFAULT_MAX_FAIL_RATIO, DEFAULT_MAX_P95_MS
from benchmarks.locustkit.generator import CpuSampler, describe_generator, generator_summary
from benchmarks.locustkit.records import (
    FINAL_JSON,
    JOBS_CSV,
    PHASES_CSV,
    PREDICT_PREFIX,
    STEPS_CSV,
    VERSIONS_CSV,
    history_start,
    number,
    read_csv,
    run_file,
)
from benchmarks.locustkit.settings import CLIENT_VARIABLE, CLIENTS, DEFAULT_CLIENT
from tests.support import servers

LOCUSTFILE = REPO_ROOT / "locustfile.py"
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist_subset.npz"  # the Makefile's MNIST_PATH default
CSV_NAME = "locust"  # Locust's --csv prefix inside the report folder
SCENARIOS: dict[str, list[str]] = {
    "mixed": [],  # no names: the locustfile's default mix
    "predict": ["PredictUser"],
    "step": ["PredictUser"],
    "retrain": ["PredictUser", "DashboardUser", "AdminUser"],
    "upload": ["PredictUser", "DashboardUser", "AdminUser"],
}
KNEE_EFFICIENCY = 0.5  # past the knee, req/s grows by less than half as much as the user count


def parse_duration(text: str) -> int:
    """Turn Locust-style durations ("90", "45s", "2m", "1m30s") into seconds."""
    text = text.strip().lower()
    if text.isdigit():
        return int(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not parts or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s, 2m or 1m30s")
    hours, minutes, seconds = (int(g or 0) for g in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def loopback_address(host: str) -> tuple[str, int]:
    """Return (ip, port) of a loopback URL; raise ValueError for anything else."""
    url = urlparse(host)
    if url.scheme != "http" or not url.hostname:
        raise ValueError(f"{host!r} is not an http:// URL")
    name = "127.0.0.1" if url.hostname == "localhost" else url.hostname
    try:
        if not ipaddress.ip_address(name).is_loopback:
            raise ValueError
    except ValueError:
        raise ValueError(f"{host!r} is not a loopback address: this script only targets 127.0.0.1") from None
    return name, url.port or 80


def health(host: str, timeout: float = 2.0) -> tuple[int, dict] | None:
    """GET /health: (status, body), or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{host}/health", timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (urllib.error.URLError, OSError, ValueError):
        return None


def base_env() -> dict[str, str]:
    """The environment for child processes, with the Makefile's MNIST_PATH default (retrain jobs need MNIST)."""
    env = dict(os.environ)
    if "MNIST_PATH" not in env and SHARED_MNIST.is_file():
        env["MNIST_PATH"] = str(SHARED_MNIST)
    return env


@contextlib.contextmanager
def started_backend(
    host: str, model_dir: Path | None, data_dir: Path | None, log_path: Path
) -> Iterator[dict[str, str]]:
    """Run gunicorn on the host's port until the block ends; yield the MODEL_DIR and DATA_DIR it was given."""
    ip, port = loopback_address(host)
    env = base_env()
    if model_dir:
        env["MODEL_DIR"] = str(model_dir)
    if data_dir:
        env["DATA_DIR"] = str(data_dir)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(servers.gunicorn("backend.wsgi:app", env, log_path=log_path, host=ip, port=port))
        except RuntimeError as exc:
            raise RuntimeError(f"gunicorn did not start on port {port} ({exc}); see {log_path}") from exc
        answer = health(host)
        if answer and answer[1].get("status") == "no-model":
            raise RuntimeError("the backend has no active model: train one (`make train`) or pass --model-dir")
        if not answer or answer[0] != 200:
            raise RuntimeError(f"the backend answered /health with {answer}; see {log_path}")
        yield {key: env[key] for key in ("MODEL_DIR", "DATA_DIR") if key in env}


def locust_command(args: argparse.Namespace, out: Path) -> list[str]:
    """Build the headless Locust command line for a scenario."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-H",
        args.host,
        "--csv",
        str(out / CSV_NAME),
        "--csv-full-history",
        "--html",
        str(out / "report.html"),
        "--only-summary",
    ]
    if args.scenario != "step":  # the step shape sets users and duration itself
        command += ["-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.run_time}s"]
    if args.processes:
        port = str(servers.free_port())  # not Locust's fixed 5557: two runs at once must not meet
        command += ["--processes", str(args.processes), "--master-bind-host", "127.0.0.1"]
        command += ["--master-bind-port", port, "--master-port", port]
    return command + SCENARIOS[args.scenario]


def locust_env(args: argparse.Namespace, backend_env: dict[str, str]) -> dict[str, str]:
    """Environment for the Locust process: thresholds, shape and admin settings."""
    env = {**base_env(), **backend_env, CLIENT_VARIABLE: args.client}
    if args.max_fail_ratio is not None:
        env["LOCUST_MAX_FAIL_RATIO"] = str(args.max_fail_ratio)
    if args.max_p95_ms is not None:
        env["LOCUST_MAX_P95_MS"] = str(args.max_p95_ms)
    elif args.scenario == "step":
        env.setdefault("LOCUST_MAX_P95_MS", "off")  # a knee search pushes p95 up on purpose
    if args.scenario == "step":
        env.update(
            LOCUST_SHAPE="step",
            LOCUST_STEP_USERS=str(args.step_users),
            LOCUST_STEP_SECONDS=str(args.step_seconds),
            LOCUST_STEP_COUNT=str(args.step_count),
        )
    else:
        env.pop("LOCUST_SHAPE", None)
    if args.scenario in ("retrain", "upload"):
        env.update(
            LOCUST_ADMIN_ACTION=args.scenario,
            LOCUST_RETRAIN_EPOCHS=str(args.epochs),
            LOCUST_RETRAIN_FROM=args.start_from,
            LOCUST_ADMIN_DELAY=str(args.admin_delay),
            LOCUST_STOP_AFTER_JOB=str(args.after_job),
            LOCUST_FORCE_SWAP="1" if args.force_swap else "0",
        )
    return env


def run_seconds(args: argparse.Namespace) -> float:
    """Return how long the Locust run itself lasts."""
    return args.step_count * args.step_seconds if args.scenario == "step" else args.run_time


def kill_tree(pid: int) -> None:
    """Kill a process and its children (Locust's local workers)."""
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for process in [*root.children(recursive=True), root]:
            with contextlib.suppress(psutil.Error):
                process.kill()


def run_locust(command: list[str], env: dict[str, str], out: Path, limit: float) -> int:
    """Run Locust, echoing and saving its output and sampling its CPU; return its exit code."""
    with (out / "locust.log").open("w") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        watchdog = threading.Timer(limit, kill_tree, [process.pid])  # a hung run must not hang the command
        watchdog.start()
        try:
            with CpuSampler(process.pid) as sampler:
                for line in process.stdout:
                    sys.stdout.write(line)
                    log_file.write(line)
                code = process.wait(timeout=30)
        finally:
            watchdog.cancel()
    sampler.write(out / CSV_NAME)
    return code


# ---------------------------------------------------------------------------------------------
# Reading the results


def find_knee(steps: list[dict[str, Any]]) -> int | None:
    """Return the index of the knee step: the last one before req/s stops growing with users."""
    if not steps:
        return None
    for i in range(1, len(steps)):
        before, now = steps[i - 1], steps[i]
        user_growth = now["users"] / before["users"] - 1
        rps_growth = now["requests_per_s"] / before["requests_per_s"] - 1 if before["requests_per_s"] else 0.0
        if user_growth > 0 and rps_growth < KNEE_EFFICIENCY * user_growth:
            return i - 1
    return len(steps) - 1


def summarise(out: Path) -> dict[str, Any]:
    """Collect the headline figures of a finished run from its CSV files; times are seconds since start."""
    prefix = out / CSV_NAME
    started = history_start(prefix)
    final_path = run_file(prefix, FINAL_JSON)
    final = json.loads(final_path.read_text()) if final_path.is_file() else {}
    total = final.get("Aggregated", {})
    endpoints = {row["name"]: row for key, row in final.items() if key != "Aggregated"}
    predict = [row for name, row in endpoints.items() if name.startswith(PREDICT_PREFIX)]
    summary: dict[str, Any] = {
        "report": str(out),
        **{
            key: total.get(key, math.nan)
            for key in ("requests", "failures", "requests_per_s", "p50_ms", "p95_ms", "p99_ms")
        },
        "predict_requests": sum(row["requests"] for row in predict),
        "predict_failures": sum(row["failures"] for row in predict),
        "endpoints": endpoints,
    }
    versions = read_csv(run_file(prefix, VERSIONS_CSV))
    summary["model_versions"] = [
        {
            "version": row["version"],
            "first_seen_s": round(number(row["first_seen"]) - started, 1),
            "last_seen_s": round(number(row["last_seen"]) - started, 1),
            "responses": int(row["responses"]),
        }
        for row in versions
    ]
    summary["swaps"] = [row["version"] for row in versions[1:]]
    summary["job"] = [
        {"t_s": round(number(row["timestamp"]) - started, 1), "status": row["status"], "detail": row["detail"]}
        for row in read_csv(run_file(prefix, JOBS_CSV))
    ]
    steps = [
        {key: (number(value) if key != "step" else int(value)) for key, value in row.items()}
        for row in read_csv(run_file(prefix, STEPS_CSV))
    ]
    if steps:
        knee = find_knee(steps)
        summary["steps"] = steps
        summary["knee"] = steps[knee] if knee is not None else None
        summary["knee_reached"] = knee is not None and knee < len(steps) - 1
    phases = [
        {key: (value if key == "phase" else number(value)) for key, value in row.items()}
        for row in read_csv(run_file(prefix, PHASES_CSV))
    ]
    if phases:
        summary["phases"] = phases
    summary["generator"] = generator_summary(prefix, summary["requests"])
    return summary


# ---------------------------------------------------------------------------------------------
# The command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add(
        "--host",
        default=os.environ.get("BACKEND_URL", "http://127.0.0.1:5000"),
        help="backend URL, loopback only [%(default)s]",
    )
    add("--scenario", choices=sorted(SCENARIOS), default="mixed", help="[%(default)s]")
    add("-u", "--users", type=int, default=10, help="[%(default)s]")
    add("-r", "--spawn-rate", type=float, default=10, help="users started per second [%(default)s]")
    add("-t", "--run-time", type=parse_duration, default="30s", help="e.g. 30s, 2m [30s]")
    add(
        "--processes",
        type=int,
        default=0,
        help="run Locust as a master with this many worker processes on this machine (Locust's --processes; "
        "one process uses at most one core); 0 runs one plain process [%(default)s]",
    )
    add(
        "--client",
        choices=sorted(CLIENTS),
        default=DEFAULT_CLIENT,
        help=f"HTTP client of the user classes: {', '.join(f'{k} = {v}' for k, v in CLIENTS.items())} [%(default)s]",
    )
    add("--step-users", type=int, default=40, help="step scenario: users added per step [%(default)s]")
    add("--step-seconds", type=int, default=10, help="step scenario: seconds per step [%(default)s]")
    add("--step-count", type=int, default=6, help="step scenario: number of steps [%(default)s]")
    add("--epochs", type=int, default=1, help="retrain scenarios: epochs of the job [%(default)s]")
    add(
        "--from",
        dest="start_from",
        choices=["active", "scratch"],
        default="active",
        help="retrain scenario: fine-tune the active model or train from scratch [%(default)s]",
    )
    add(
        "--force-swap",
        action="store_true",
        help="retrain scenarios: activate the candidate even if the promotion gate rejects it (test stores only)",
    )
    add(
        "--admin-delay",
        type=float,
        default=5,
        help="retrain scenarios: seconds of plain load before the job [%(default)s]",
    )
    add(
        "--after-job",
        type=float,
        default=10,
        help="retrain scenarios: end the run this many seconds after the job ends (--run-time stays the limit) "
        "[%(default)s]",
    )
    add("--max-fail-ratio", type=float, help=f"exit 1 above this failure ratio [{DEFAULT_MAX_FAIL_RATIO}]")
    add(
        "--max-p95-ms",
        type=float,
        help=f"exit 1 above this aggregated p95, 0 disables [{DEFAULT_MAX_P95_MS:.0f}; off for step]",
    )
    add("--model-dir", type=Path, help="MODEL_DIR of a backend this script starts [$MODEL_DIR or models/]")
    add(
        "--data-dir",
        type=Path,
        help="DATA_DIR of a started backend, also where the admin token is read [$DATA_DIR or data/]",
    )
    add("--reports", type=Path, default=REPO_ROOT / "reports", help="parent of the report folder [reports/]")
    args = parser.parse_args(argv)
    if args.processes < 0:
        parser.error("--processes must be 0 (one process) or a number of workers")
    try:
        loopback_address(args.host)
    except ValueError as exc:
        parser.error(str(exc))
    args.host = args.host.rstrip("/")
    return args


def run(args: argparse.Namespace) -> tuple[int, Path, dict[str, Any]]:
    """Run one load test end to end; return Locust's exit code, the report folder and the summary."""
    out = args.reports / f"loadtest-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=False)
    load = os.getloadavg()
    with contextlib.ExitStack() as stack:
        backend_started = health(args.host) is None
        if backend_started:
            print(f"nothing answers at {args.host}: starting gunicorn (log: {out / 'backend.log'})", flush=True)
            backend_env = stack.enter_context(
                started_backend(args.host, args.model_dir, args.data_dir, out / "backend.log")
            )
        else:
            backend_env = {key: str(value) for key, value in (("DATA_DIR", args.data_dir),) if value}
        started = time.time()
        code = run_locust(locust_command(args, out), locust_env(args, backend_env), out, run_seconds(args) + 120)
    summary = summarise(out)
    summary.update(
        scenario=args.scenario,
        host=args.host,
        exit_code=code,
        backend_started=backend_started,
        load_average_before=[round(x, 2) for x in load],
        users=None if args.scenario == "step" else args.users,
        run_seconds=run_seconds(args),
        processes=args.processes,
        client=CLIENTS[args.client],
    )
    title = f"Digit Lab load test: {args.scenario}, " + (
        f"steps of {args.step_users} users x {args.step_seconds} s"
        if args.scenario == "step"
        else f"{args.users} users"
    )
    title += f", {CLIENTS[args.client]}, " + (f"{args.processes} worker processes" if args.processes else "1 process")
    title += f"  ({datetime.fromtimestamp(started):%Y-%m-%d %H:%M})"
    summary["plot"] = str(plot(out / CSV_NAME, title, out / "loadtest.png"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return code, out, summary


def _latencies(row: dict[str, Any]) -> str:
    """Format a row's p50/p95/p99 as "p50 a / p95 b / p99 c ms"."""
    return f"p50 {row['p50_ms']:.0f} / p95 {row['p95_ms']:.0f} / p99 {row['p99_ms']:.0f} ms"


def describe(summary: dict[str, Any]) -> str:
    """Format the summary as a few readable lines."""
    lines = [
        f"report: {summary['report']}",
        f"requests {summary['requests']}, failures {summary['failures']}, {summary['requests_per_s']:.1f} req/s, "
        f"p50 {summary['p50_ms']:.0f} ms, p95 {summary['p95_ms']:.0f} ms, p99 {summary['p99_ms']:.0f} ms",
        f"/predict: {summary['predict_requests']} requests, {summary['predict_failures']} failed",
    ]
    if "steps" in summary and not summary["knee_reached"]:
        lines.append("  knee not reached: req/s still grew with users at the last step; add steps or users per step")
    for row in summary.get("steps", []):
        mark = "  <- knee" if row is summary.get("knee") and summary["knee_reached"] else ""
        lines.append(
            f"  step {row['step']}: {row['users']:.0f} users, {row['requests_per_s']:.1f} req/s, "
            f"{_latencies(row)}, {row['failures']:.0f} failures{mark}"
        )
    for row in summary.get("phases", []):
        lines.append(
            f"  /predict {row['phase']}: {row['seconds']:.0f} s, {row['requests_per_s']:.1f} req/s, "
            f"{_latencies(row)}, {row['failures']:.0f} failures of {row['requests']:.0f}"
        )
    for event in summary["job"]:
        lines.append(f"  job at {event['t_s']:.1f} s: {event['status']} {event['detail'][:160]}")
    for version in summary["model_versions"]:
        lines.append(
            f"  model {version['version']}: served from {version['first_seen_s']} s to {version['last_seen_s']} s "
            f"({version['responses']} responses)"
        )
    lines.append(describe_generator(summary["generator"]))
    lines.append(f"plot: {summary['plot']}  exit code: {summary['exit_code']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    args = parse_args(argv)
    code, _, summary = run(args)
    print(describe(summary))
    return code


if __name__ == "__main__":
    sys.exit(main())
