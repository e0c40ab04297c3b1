"""The Locust load test: a smoke run against real gunicorn, wrong bodies failing a run, the swap timeline,
distributed mode (a master and worker processes), both HTTP clients, and the generator's own CPU share.

Locust is only ever run in a subprocess: importing it here would gevent-patch the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from backend.data.jobs import STATUSES, UNFINISHED
from benchmarks import loadtest
from benchmarks.locustkit.checks import FINISHED, batch_problem, job_problem, prediction_problem
from benchmarks.locustkit.gate import gate_problems
from benchmarks.locustkit.generator import (
    SATURATION_SHARE,
    WINDOW_SECONDS,
    busiest_share,
    describe_generator,
    generator_summary,
)
from benchmarks.locustkit.records import (
    GENERATOR_COLUMNS,
    GENERATOR_CSV,
    RunRecord,
    percentile,
    read_csv,
    run_file,
    write_csv,
)
from benchmarks.locustkit.settings import CLIENTS, admin_requested, env_bound
from tests.support.servers import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_smoke_load_against_gunicorn_writes_report_and_plot(trained_store, tmp_path: Path) -> None:
    """~10 s of the default mix against a gunicorn the command starts: zero failures, every report file."""
    host = f"http://127.0.0.1:{free_port()}"
    args = loadtest.parse_args(
        [
            "--host",
            host,
            "-u",
            "4",
            "-r",
            "4",
            "-t",
            "10s",
            "--max-p95-ms",
            "0",  # a shared CI box must not flake on p95
            "--model-dir",
            str(trained_store.root),
            "--data-dir",
            str(tmp_path / "data"),
            "--reports",
            str(tmp_path / "reports"),
        ]
    )

    code, out, summary = loadtest.run(args)

    assert code == 0
    assert summary["backend_started"] is True
    assert summary["requests"] > 10 and summary["failures"] == 0
    assert summary["predict_requests"] > 0 and summary["predict_failures"] == 0
    for name in (
        "locust_stats.csv",
        "locust_stats_history.csv",
        "locust_failures.csv",
        "locust_final.json",
        "report.html",
        "summary.json",
    ):
        assert (out / name).stat().st_size > 0, name
    assert "Locust" in (out / "report.html").read_text()
    versions = read_csv(out / "locust_model_versions.csv")
    assert [row["version"] for row in versions] == [trained_store.active_version()]
    png = (out / "loadtest.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    assert loadtest.health(host) is None  # the backend the command started is stopped again


class StubApi(BaseHTTPRequestHandler):
    """A fake backend: bad prediction bodies, or a retrain job that swaps v1 for v2."""

    mode = "bad"
    job_started: float | None = None
    served = 0
    url = ""
    agents: set[str] = set()  # the User-Agent of every request: which HTTP client sent it

    def log_message(self, *args) -> None:
        """Keep the test output quiet."""

    def _send(self, status: int, body: dict | str, content_type: str = "application/json") -> None:
        """Answer with a JSON (or text) body."""
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _version(self) -> str:
        """v2 once the fake job has run for two seconds, else v1."""
        started = type(self).job_started
        return "v2" if started is not None and time.time() - started > 2.0 else "v1"

    def do_GET(self) -> None:
        """Health, model listings, metrics and the job."""
        self.agents.add(self.headers.get("User-Agent", ""))
        if self.path == "/health":
            self._send(200, {"status": "ok", "model_version": self._version()})
        elif self.path == "/model":
            self._send(200, {"version": self._version()})
        elif self.path == "/models":
            self._send(200, {"active": self._version(), "versions": []})
        elif self.path == "/metrics":
            self._send(200, "digitlab_http_requests_total 1\n", "text/plain")
        elif self.path == "/jobs/job-1":
            status = "running" if self._version() == "v1" else "succeeded"
            self._send(
                200,
                {
                    "status": status,
                    "progress": 1.0 if status == "succeeded" else 0.5,
                    "result": {"candidate": "v2", "promoted": True} if status == "succeeded" else None,
                },
            )
        else:
            self._send(404, {"error": "no such endpoint"})

    def do_POST(self) -> None:
        """Predictions (bad or good), batches (good) and the retrain trigger."""
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.agents.add(self.headers.get("User-Agent", ""))
        if self.path == "/retrain":
            if self.headers.get("Authorization") != "Bearer stub-token":
                self._send(401, {"error": "wrong token"})
                return
            type(self).job_started = time.time()
            self._send(202, {"job_id": "job-1", "status_url": "/jobs/job-1"})
            return
        if self.path not in ("/predict", "/predict/batch"):
            self._send(404, {"error": "no such endpoint"})
            return
        type(self).served += 1
        good = {
            "digit": 3,
            "confidence": 0.91,
            "probabilities": [0.01] * 10,
            "model_version": self._version(),
            "inference_ms": 1.0,
        }
        good["probabilities"][3] = 0.91
        if self.path == "/predict/batch":
            self._send(200, {"predictions": [good] * body.count(b'name="files"')})
        elif self.mode == "bad":
            broken = (
                {key: value for key, value in good.items() if key != "digit"}
                if self.served % 2
                else {**good, "probabilities": [0.09] * 10, "digit": 0, "confidence": 0.09}
            )
            self._send(200, broken)
        else:
            self._send(200, good)


@pytest.fixture()
def stub(request: pytest.FixtureRequest) -> Iterator[type[StubApi]]:
    """Serve StubApi in `request.param` mode on a loopback port; yield its handler class, with the URL set."""
    handler = type("Stub", (StubApi,), {"mode": request.param, "job_started": None, "served": 0, "agents": set()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield handler
    server.shutdown()
    server.server_close()


@pytest.mark.e2e
@pytest.mark.parametrize("stub", ["bad"], indirect=True)
def test_200_with_wrong_body_is_a_failure_and_fails_the_run(stub: type[StubApi], tmp_path: Path) -> None:
    """A missing digit and probabilities summing to 0.9 are failures, and the gate exits non-zero."""
    prefix = tmp_path / "bad"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            "locustfile.py",  # as the README runs it, from the repo root
            "--headless",
            "-u",
            "2",
            "-r",
            "2",
            "-t",
            "3s",
            "-H",
            stub.url,
            "--csv",
            str(prefix),
            "--only-summary",
            "PredictUser",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "failure ratio" in result.stderr and "LOCUST_MAX_FAIL_RATIO" in result.stderr
    failures = (tmp_path / "bad_failures.csv").read_text()
    assert "missing or invalid 'digit'" in failures
    assert "probabilities sum to 0.900000, not 1" in failures
    total = next(row for row in read_csv(tmp_path / "bad_stats.csv") if row["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 0 and total["Failure Count"] == total["Request Count"]


@pytest.mark.e2e
@pytest.mark.parametrize("stub", ["swap"], indirect=True)
@pytest.mark.parametrize("processes", [0, 2], ids=["one-process", "master-and-2-workers"])
def test_retrain_scenario_records_job_and_marks_the_swap(
    stub: type[StubApi],
    processes: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """AdminUser follows its retrain; the new version's first appearance is the swap; the run ends after the job.

    With worker processes the workers' records reach the master, the job's phase reaches every worker,
    the admin's worker ends the whole run, and the CPU of the master and each worker is reported.
    """
    monkeypatch.setenv("ADMIN_TOKEN", "stub-token")
    users = 5
    argv = ["--host", stub.url, "--scenario", "retrain", "-u", str(users), "-r", str(users), "-t", "30s"]
    argv += ["--admin-delay", "1", "--after-job", "2", "--processes", str(processes), "--reports", str(tmp_path)]

    started = time.time()
    code = loadtest.main(argv)
    printed = capsys.readouterr().out

    assert time.time() - started < 25  # ended 2 s after the job, not at the 30 s limit
    (out,) = tmp_path.iterdir()
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0 and summary["failures"] == 0 and summary["predict_failures"] == 0
    assert summary["requests"] > 10 and summary["processes"] == processes
    statuses = [event["status"] for event in summary["job"]]
    assert statuses[0] == "submitted" and statuses[-1] == "succeeded"
    assert summary["swaps"] == ["v2"]
    old, new = summary["model_versions"]
    assert old["version"] == "v1" and new["version"] == "v2" and new["first_seen_s"] >= old["first_seen_s"]
    assert old["responses"] + new["responses"] == summary["predict_requests"]
    phases = {row["phase"]: row for row in summary["phases"]}
    assert set(phases) == {"1 before job", "2 job running (train, gate, swap)", "3 after job (succeeded)"}
    assert all(row["failures"] == 0 for row in phases.values())
    assert sum(row["requests"] for row in phases.values()) == summary["predict_requests"]
    # Every worker counted its /predict requests under the phase, not only the one running the AdminUser.
    assert phases["2 job running (train, gate, swap)"]["users"] == users
    generator = summary["generator"]
    roles = sorted(row["role"] for row in generator["processes"])
    assert roles == (["master"] + ["worker"] * processes if processes else ["locust"])
    assert all(0 <= row["mean_share"] <= row["busiest_share"] <= 1.5 for row in generator["processes"])
    assert describe_generator(generator) in printed
    assert "generator CPU (share of one core" in printed and "saturated" in printed
    assert (out / "loadtest.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.e2e
@pytest.mark.parametrize("stub", ["good"], indirect=True)
@pytest.mark.parametrize("client", ["fast", "requests"])
def test_both_http_clients_send_the_same_mix(stub: type[StubApi], client: str, tmp_path: Path) -> None:
    """FastHttpUser (the default) and HttpUser both run the default mix, multipart batches included, with no failure."""
    argv = ["--host", stub.url, "-u", "8", "-r", "8", "-t", "4s", "--client", client, "--reports", str(tmp_path)]

    code, _, summary = loadtest.run(loadtest.parse_args(argv))

    assert code == 0 and summary["failures"] == 0
    assert summary["predict_requests"] > 0 and summary["endpoints"]["/predict/batch"]["requests"] > 0
    locust_agents = {agent for agent in stub.agents if not agent.startswith("Python-urllib/")}  # not the /health probe
    from_requests = {agent for agent in locust_agents if agent.startswith("python-requests/")}
    assert locust_agents and (from_requests == locust_agents if client == "requests" else not from_requests)
    assert summary["client"] == CLIENTS[client]


def test_knee_is_the_last_step_before_throughput_stops_following_users() -> None:
    """req/s doubling with users is below the knee; +12% for +50% users is past it."""
    steps = [
        {"users": 20, "requests_per_s": 19.0},
        {"users": 40, "requests_per_s": 38.0},
        {"users": 60, "requests_per_s": 42.5},
        {"users": 80, "requests_per_s": 43.0},
    ]
    assert loadtest.find_knee(steps) == 1
    assert loadtest.find_knee(steps[:2]) == 1  # still linear: the knee lies beyond the last step
    assert loadtest.find_knee([]) is None


def test_only_loopback_hosts_are_accepted() -> None:
    """The command starts and loads backends, so it refuses anything but loopback."""
    assert loadtest.loopback_address("http://localhost:5000") == ("127.0.0.1", 5000)
    assert loadtest.loopback_address("http://127.0.0.1:8080/") == ("127.0.0.1", 8080)
    with pytest.raises(ValueError, match="loopback"):
        loadtest.loopback_address("http://10.1.2.3:5000")
    with pytest.raises(SystemExit):
        loadtest.parse_args(["--host", "http://example.com"])


def test_loadtest_module_leaves_locust_out_of_the_process() -> None:
    """benchmarks.loadtest reads the locustkit's files without importing Locust, whose import gevent-patches."""
    code = "import sys, benchmarks.loadtest; print(sorted({'locust', 'gevent'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_prediction_checks_name_the_problem() -> None:
    """A well-formed prediction passes; each kind of wrong body is named."""
    good = {"digit": 3, "confidence": 0.91, "probabilities": [0.01] * 10, "model_version": "v1"}
    good["probabilities"][3] = 0.91
    assert prediction_problem(good) is None
    assert "not the most probable" in prediction_problem({**good, "digit": 2, "confidence": 0.01})
    assert "confidence" in prediction_problem({**good, "confidence": 0.5})
    assert "model_version" in prediction_problem({**good, "model_version": ""})
    assert batch_problem({"predictions": [good, good]}, 2) is None
    assert batch_problem({"predictions": [good]}, 2) == "1 predictions for 2 images"
    assert "predictions[1]" in batch_problem({"predictions": [good, {**good, "digit": None}]}, 2)


def test_job_checks_use_the_backends_status_names() -> None:
    """Every status the job table knows is accepted, a failed job is a failed request, others are unknown."""
    assert set(FINISHED) | set(UNFINISHED) == set(STATUSES)
    assert [job_problem({"status": status}) is None for status in STATUSES].count(False) == 1
    assert "training job failed" in job_problem({"status": "failed", "error": "out of memory"})
    assert "unknown job status" in job_problem({"status": "done"})


def test_gate_thresholds_and_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate names each broken bound; "off" and 0 disable a bound."""
    assert gate_problems(0.0, 100.0, 50, 0.01, 1000.0) == []
    assert gate_problems(0.0, 0.0, 0, 0.01, 1000.0) == ["no requests were made"]
    broken = gate_problems(0.5, 2000.0, 50, 0.01, 1000.0)
    assert "LOCUST_MAX_FAIL_RATIO" in broken[0] and "LOCUST_MAX_P95_MS" in broken[1]
    assert gate_problems(0.5, 2000.0, 50, None, None) == []
    for raw, bound in (("off", None), ("0", None), ("250", 250.0), ("", 1000.0)):
        monkeypatch.setenv("LOCUST_MAX_P95_MS", raw)
        assert env_bound("LOCUST_MAX_P95_MS", 1000.0) == bound


def test_admin_user_is_on_only_when_asked_for() -> None:
    """AdminUser runs when named or tagged, never in a plain run."""
    assert admin_requested(["-f", "locustfile.py", "PredictUser", "AdminUser"])
    assert admin_requested(["--tags", "predict", "admin", "--headless"])
    assert not admin_requested(["--tags", "predict", "--headless", "admin"])  # a class name, not a tag
    assert not admin_requested(["-u", "10", "PredictUser"])


def test_run_record_writes_timelines_and_exact_percentiles(tmp_path: Path) -> None:
    """The swap shows as a second version's first appearance; phases get nearest-rank percentiles."""
    record = RunRecord()
    for when, version in ((1.0, "v1"), (2.0, "v1"), (2.5, "v2"), (2.2, "v1"), (3.0, "v2")):
        record.versions.saw(version, when)
    for ms in range(1, 101):
        record.phases.add("1 before job", 4, float(ms), ms == 100, now=ms / 10)
    record.note_job("job-1", "submitted", {"progress": 0.0})
    record.write(tmp_path / "run")

    versions = read_csv(tmp_path / "run_model_versions.csv")
    assert [(row["version"], row["first_seen"], row["last_seen"], row["responses"]) for row in versions] == [
        ("v1", "1.0", "2.2", "3"),
        ("v2", "2.5", "3.0", "2"),
    ]
    (phase,) = read_csv(tmp_path / "run_phases.csv")
    assert (phase["requests"], phase["failures"], phase["p50_ms"], phase["p95_ms"]) == ("100", "1", "50.0", "95.0")
    assert [row["status"] for row in read_csv(tmp_path / "run_jobs.csv")] == ["submitted"]
    assert not (tmp_path / "run_steps.csv").exists()  # no step shape ran
    assert percentile([], 0.5) != percentile([], 0.5)  # NaN when nothing was measured


def test_generator_is_saturated_only_when_a_process_stays_busy_for_the_window(tmp_path: Path) -> None:
    """A process at 95% of a core for a window is saturated; one busy second in an idle run is not."""
    steps = [i * 0.5 for i in range(41)]  # 20 s sampled every 0.5 s
    busy_second = [(t, 0.1 * t + (0.9 if t >= 10.5 else 0.0)) for t in steps]  # 10% plus 0.9 s of work at 10-10.5 s
    busy_window = [(t, 0.1 * t + 0.85 * max(0.0, min(t, 10 + WINDOW_SECONDS) - 10)) for t in steps]

    assert busiest_share(busy_second) < SATURATION_SHARE
    assert busiest_share(busy_window) == pytest.approx(0.95)
    assert busiest_share([(0.0, 0.0), (2.0, 1.9)]) == pytest.approx(0.95)  # a run shorter than the window
    # Busy only at start-up and shut-down: each window sees one burst, the run's mean sees both.
    ends = [(0.0, 0.0), (0.5, 0.5), *((t, 0.5) for t in steps[2:13]), (6.5, 1.0)]
    assert busiest_share(ends) == pytest.approx(1.0 / 6.5)

    rows = [{"timestamp": t, "pid": 7, "role": "worker", "cpu_seconds": c} for t, c in busy_window]
    rows += [{"timestamp": t, "pid": 6, "role": "master", "cpu_seconds": 0.02 * t} for t in steps]
    prefix = tmp_path / "run"
    write_csv(run_file(prefix, GENERATOR_CSV), rows, GENERATOR_COLUMNS)
    summary = generator_summary(prefix)  # no stats history: the whole sampled span counts
    assert [(row["role"], row["pid"], row["saturated"]) for row in summary["processes"]] == [
        ("master", 6, False),
        ("worker", 7, True),
    ]
    assert summary["saturated"] and "generator saturated" in describe_generator(summary)
    assert "master 6 2% / 2%" in describe_generator(summary)
    assert "not saturated" in describe_generator({**summary, "saturated": False})
    per_request = generator_summary(prefix, requests=100)["cpu_ms_per_request"]
    assert per_request == pytest.approx(1000 * (0.1 * 20 + 0.85 * WINDOW_SECONDS + 0.02 * 20) / 100)


def test_workers_records_merge_into_the_masters() -> None:
    """Versions widen their first/last times, job events interleave by time, users and requests add up."""
    first, second, master = RunRecord(), RunRecord(), RunRecord()
    first.versions.saw("v1", 1.0)
    first.versions.saw("v2", 5.0)
    second.versions.saw("v1", 2.0)
    second.versions.saw("v1", 4.0)
    for ms in (10.0, 20.0):
        first.phases.add("1 before job", 3, ms, False, now=ms / 10)
    second.phases.add("1 before job", 2, 30.0, True, now=4.0)
    second.steps.add(1, 2, 5.0, False, now=1.0)
    first.note_job("job-1", "submitted", {})
    second.job_events.append({"timestamp": 0.5, "job_id": "job-1", "status": "queued", "progress": "", "detail": ""})

    for worker in (first, second):
        master.merge(json.loads(json.dumps(worker.export())))  # what survives the trip to the master

    assert master.versions.rows() == [
        {"version": "v1", "first_seen": 1.0, "last_seen": 4.0, "responses": 3},
        {"version": "v2", "first_seen": 5.0, "last_seen": 5.0, "responses": 1},
    ]
    (phase,) = master.phases.rows("phase")
    assert (phase["users"], phase["requests"], phase["failures"], phase["p99_ms"]) == (5, 3, 1, 30.0)
    assert [row["users"] for row in master.steps.rows("step")] == [2]
    assert [event["status"] for event in master.job_events] == ["queued", "submitted"]
