"""Locust scenarios for the Digit Lab API: `locust -f locustfile.py -H http://127.0.0.1:5000`.

Users (pick by name: `locust -f locustfile.py PredictUser AdminUser`, by tag: `--tags predict admin`
with the tags predict, batch, dashboard and admin, or in the web UI with `--class-picker`):
  PredictUser    the default bulk: one image per request to /predict, a mix of photos, canvas
                 drawings (dark and transparent) and MNIST-style PNGs from benchmarks/samples/
  BatchUser      /predict/batch with 10-50 of those images
  DashboardUser  /health, /model, /models, /metrics at a low rate
  AdminUser      off unless named (or tagged): starts one /retrain, or /upload_and_retrain with a
                 ZIP of the samples, and polls its job: serving while a model trains and is swapped
A plain run mixes PredictUser : BatchUser : DashboardUser about 16 : 2 : 1.

Environment variables:
  LOCUST_MAX_FAIL_RATIO  exit non-zero above this failure ratio (default 0.01)
  LOCUST_MAX_P95_MS      exit non-zero above this aggregated p95 in ms (default 1000; 0 or "off" disables)
  LOCUST_SHAPE=step      use StepLoadShape (the web UI lists it with --class-picker): LOCUST_STEP_USERS
                         more users every LOCUST_STEP_SECONDS for LOCUST_STEP_COUNT steps (40, 10, 6)
  LOCUST_ADMIN_ACTION    retrain (default) or upload; LOCUST_RETRAIN_EPOCHS (1), LOCUST_RETRAIN_FROM (active),
                         LOCUST_ADMIN_DELAY seconds of plain load before the job (5),
                         LOCUST_STOP_AFTER_JOB=S to end the run S seconds after the job ends
                         (a job the run started and that is still going when the run ends is cancelled);
                         LOCUST_FORCE_SWAP=1 activates a candidate the promotion gate rejected, so the
                         run still sees a hot swap (only on a store you can spare)
  ADMIN_TOKEN            the admin token; else read from $DATA_DIR/admin_token (DATA_DIR defaults to ./data)
With --csv PREFIX the run also writes PREFIX_model_versions.csv (first and last time each model
version answered: the swap moment), PREFIX_jobs.csv, and exact per-step (PREFIX_steps.csv) or
per-retrain-phase (PREFIX_phases.csv) figures. benchmarks/loadtest.py turns them into a report.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import secrets
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, LoadTestShape, between, constant, events, tag, task
from locust.contrib.fasthttp import FastResponse, ResponseContextManager
from locust.env import Environment

REPO_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO_ROOT))  # locust may be started from any folder; the samples live in the repo

from benchmarks.make_samples import SAMPLES_DIR, load_samples  # noqa: E402

log = logging.getLogger("digitlab.locust")

PROBABILITY_TOLERANCE = 1e-3  # float32 softmax sums are off by ~1e-6; anything near 1e-3 is a real bug
TERMINAL_JOB_STATES = ("succeeded", "rejected", "failed", "cancelled")
BOUNDARY = f"digitlab-{secrets.token_hex(12)}"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def _env_float(name: str, default: float) -> float:
    """Read a float environment variable, falling back to a default."""
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def _env_bound(name: str, default: float) -> float | None:
    """Read a threshold; "off", "none" or 0 disables it (None)."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("off", "none"):
        return None
    value = float(raw) if raw else default
    return value if value > 0 else None


# ---------------------------------------------------------------------------------------------
# Request bodies, built once: encoding multipart per request would cost the load generator CPU
# that the backend shares on a small machine.


def multipart_part(field: str, filename: str, data: bytes, content_type: str) -> bytes:
    """Encode one file field of a multipart/form-data body (without the closing boundary)."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    )
    return head.encode() + data + b"\r\n"


def multipart_field(field: str, value: str) -> bytes:
    """Encode one plain form field of a multipart/form-data body."""
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode()


def multipart_body(parts: list[bytes]) -> bytes:
    """Join encoded parts into a complete multipart/form-data body."""
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


@dataclass(frozen=True)
class Sample:
    """One sample image and its pre-encoded request parts."""

    style: str
    label: int
    name: str
    data: bytes
    single: bytes  # the whole /predict body
    batch_part: bytes  # this image as one `files` part of a /predict/batch body


def _sample(style: str, label: int, name: str, data: bytes) -> Sample:
    """Wrap a sample image with its request bodies."""
    content_type = "image/jpeg" if name.endswith(".jpg") else "image/png"
    return Sample(
        style,
        label,
        name,
        data,
        single=multipart_body([multipart_part("file", name, data, content_type)]),
        batch_part=multipart_part("files", name, data, content_type),
    )


SAMPLES = [_sample(*row) for row in load_samples(SAMPLES_DIR)]


def samples_zip(samples: list[Sample]) -> bytes:
    """Pack the samples as a training ZIP with one folder per digit, as /upload_and_retrain expects."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # PNG/JPEG are compressed already
        for sample in samples:
            archive.writestr(f"{sample.label}/{sample.name}", sample.data)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Body checks: a 200 with a wrong body is a failure.


def prediction_problem(body: Any) -> str | None:
    """Say what is wrong with one prediction object, or return None if it is well formed."""
    if not isinstance(body, dict):
        return f"prediction is not a JSON object: {str(body)[:80]}"
    digit = body.get("digit")
    if not isinstance(digit, int) or isinstance(digit, bool) or not 0 <= digit <= 9:
        return f"missing or invalid 'digit': {digit!r}"
    probabilities = body.get("probabilities")
    if not isinstance(probabilities, list) or len(probabilities) != 10:
        return f"'probabilities' is not a list of 10 numbers: {str(probabilities)[:80]}"
    if not all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 1.0 for p in probabilities):
        return "'probabilities' holds a value that is not a number in [0, 1]"
    total = math.fsum(probabilities)
    if abs(total - 1.0) > PROBABILITY_TOLERANCE:
        return f"probabilities sum to {total:.6f}, not 1"
    if probabilities[digit] < max(probabilities):
        return f"'digit' {digit} is not the most probable class"
    confidence = body.get("confidence")
    if not isinstance(confidence, (int, float)) or abs(confidence - probabilities[digit]) > PROBABILITY_TOLERANCE:
        return f"'confidence' {confidence!r} is not the probability of the digit"
    if not isinstance(body.get("model_version"), str) or not body["model_version"]:
        return "missing 'model_version'"
    return None


def batch_problem(body: Any, sent: int) -> str | None:
    """Say what is wrong with a /predict/batch body for `sent` images, or return None."""
    predictions = body.get("predictions") if isinstance(body, dict) else None
    if not isinstance(predictions, list):
        return "missing 'predictions' list"
    if len(predictions) != sent:
        return f"{len(predictions)} predictions for {sent} images"
    for i, prediction in enumerate(predictions):
        problem = prediction_problem(prediction)
        if problem:
            return f"predictions[{i}]: {problem}"
    return None


def _json_or_none(response: FastResponse) -> Any:
    """Return the decoded JSON body, or None if it is not JSON."""
    try:
        return response.json()
    except (ValueError, TypeError):
        return None


def check_json(
    response: ResponseContextManager, problem: Callable[[Any], str | None], expected: tuple[int, ...] = (200,)
) -> Any:
    """Mark a caught response failed on an unexpected status or a body `problem` finds; return the body."""
    if response.status_code not in expected:
        text = (response.text or "")[:200] if response.status_code else str(response.error)
        response.failure(f"HTTP {response.status_code}: {text}")
        return None
    body = _json_or_none(response)
    issue = "body is not JSON" if body is None else problem(body)
    if issue:
        response.failure(issue)
        return None
    response.success()
    return body


# ---------------------------------------------------------------------------------------------
# Timelines written next to Locust's CSVs: when each model version was served, what the job did.


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

    def rows(self) -> list[dict[str, Any]]:
        """Return one row per version, in order of first appearance."""
        ordered = sorted(self.versions.items(), key=lambda item: item[1][0])
        return [{"version": v, "first_seen": f, "last_seen": last, "responses": n} for v, (f, last, n) in ordered]

    def reset(self) -> None:
        """Forget everything (a new test started)."""
        self.versions.clear()


VERSIONS = VersionLog()
JOB_EVENTS: list[dict[str, Any]] = []  # AdminUser's job, one row per status change


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Write rows as a CSV file with a header."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------------------------------------
# Users


class PredictUser(FastHttpUser):
    """Posts one image at a time to /predict: photos, canvas drawings and MNIST-style PNGs."""

    weight = 16
    wait_time = between(0.5, 1.5)

    @tag("predict")
    @task
    def predict(self) -> None:
        """Send one random sample and check the prediction."""
        sample = random.choice(SAMPLES)
        with self.client.post(
            "/predict",
            data=sample.single,
            headers={"Content-Type": MULTIPART},
            name=f"/predict [{sample.style}]",
            catch_response=True,
        ) as response:
            body = check_json(response, prediction_problem)
        if body is not None:
            VERSIONS.saw(body["model_version"], time.time())


class BatchUser(FastHttpUser):
    """Posts 10-50 images at once to /predict/batch."""

    weight = 2
    wait_time = between(1, 3)

    @tag("batch")
    @task
    def predict_batch(self) -> None:
        """Send a random batch and check every prediction."""
        chosen = random.choices(SAMPLES, k=random.randint(10, 50))
        body = multipart_body([sample.batch_part for sample in chosen])
        with self.client.post(
            "/predict/batch", data=body, headers={"Content-Type": MULTIPART}, name="/predict/batch", catch_response=True
        ) as response:
            result = check_json(response, lambda payload: batch_problem(payload, len(chosen)))
        if result is not None:
            VERSIONS.saw(result["predictions"][0]["model_version"], time.time())


def _has(key: str, kind: type) -> Callable[[Any], str | None]:
    """Build a body check requiring `key` of type `kind`."""
    return lambda body: None if isinstance(body, dict) and isinstance(body.get(key), kind) else f"missing '{key}'"


class DashboardUser(FastHttpUser):
    """Polls the operational endpoints at a low rate, as the dashboard and Prometheus do."""

    weight = 1
    wait_time = between(2, 5)

    @tag("dashboard")
    @task(3)
    def health(self) -> None:
        """GET /health: must say ok and name the served version."""
        with self.client.get("/health", name="/health", catch_response=True) as response:
            check_json(
                response, lambda b: None if b.get("status") == "ok" and b.get("model_version") else f"unhealthy: {b}"
            )

    @tag("dashboard")
    @task
    def model(self) -> None:
        """GET /model: the active version's metadata."""
        with self.client.get("/model", name="/model", catch_response=True) as response:
            check_json(response, _has("version", str))

    @tag("dashboard")
    @task
    def models(self) -> None:
        """GET /models: every stored version."""
        with self.client.get("/models", name="/models", catch_response=True) as response:
            check_json(response, _has("versions", list))

    @tag("dashboard")
    @task
    def metrics(self) -> None:
        """GET /metrics: Prometheus text with the app's own series."""
        with self.client.get("/metrics", name="/metrics", catch_response=True) as response:
            if response.status_code == 200 and "digitlab_" in (response.text or ""):
                response.success()
            else:
                response.failure(f"HTTP {response.status_code}: no digitlab_ series in /metrics")


def admin_token() -> str | None:
    """Return ADMIN_TOKEN, else the token the backend wrote to $DATA_DIR/admin_token, else None."""
    if os.environ.get("ADMIN_TOKEN"):
        return os.environ["ADMIN_TOKEN"]
    path = Path(os.environ.get("DATA_DIR") or REPO_ROOT / "data") / "admin_token"
    return path.read_text().strip() if path.is_file() else None


def _job_problem(body: Any) -> str | None:
    """Check a /jobs/<id> body; a job that failed counts as a failed request."""
    status = body.get("status") if isinstance(body, dict) else None
    if status not in (*TERMINAL_JOB_STATES, "queued", "running"):
        return f"unknown job status {status!r}"
    if status == "failed":
        return f"the training job failed: {str(body.get('error'))[:200]}"
    return None


def admin_requested(argv: list[str]) -> bool:
    """Tell whether the command line names AdminUser or asks for the admin tag (--tags/-T)."""
    if "AdminUser" in argv:
        return True
    tags, collecting = set(), False
    for arg in argv:
        if arg in ("--tags", "-T"):
            collecting = True
        elif collecting and not arg.startswith("-"):
            tags.add(arg)
        else:
            collecting = False
    return "admin" in tags


class AdminUser(FastHttpUser):
    """Starts one retrain (or ZIP upload) and polls its job to the end, then idles."""

    # Off by default: Locust drops weight-0 classes before any event hook runs, so the command line
    # (the class name or the admin tag) turns it on here; in the web UI set its fixed_count to 1.
    weight = 0
    fixed_count = 1 if admin_requested(sys.argv[1:]) else 0
    wait_time = constant(1)

    def on_start(self) -> None:
        """Prepare the job state and the admin header."""
        self.job_id: str | None = None
        self.owns_job = False  # False when a 409 handed us someone else's running job
        self.status_url: str | None = None
        self.last_status: str | None = None
        self.done = False  # nothing more to do: job over, polling given up, or the start refused
        self.finished = False  # the job itself reached a terminal state
        self.start_at = time.time() + _env_float("LOCUST_ADMIN_DELAY", 5)  # a baseline before training starts
        self.deadline = self.start_at + _env_float("LOCUST_JOB_TIMEOUT", 600)
        token = admin_token()
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        set_phase("1 before job")

    @tag("admin")
    @task
    def drive(self) -> None:
        """Start the job once, then poll it every second until it ends."""
        if self.done or time.time() < self.start_at:
            return
        if self.job_id is None:
            self.start_job()
        elif time.time() > self.deadline:
            log.warning("job %s still not finished after LOCUST_JOB_TIMEOUT; no longer polling", self.job_id)
            self.done = True
        else:
            self.poll()

    def on_stop(self) -> None:
        """Cancel our job if the run ends before it does, so no training outlives the load test."""
        if self.job_id and self.owns_job and not self.finished:
            with self.client.post(
                f"/jobs/{self.job_id}/cancel", headers=self.auth, name="/jobs/[id]/cancel", catch_response=True
            ) as response:
                body = check_json(response, _has("status", str))
            self._note("cancelled by the load test", body or {})

    def start_job(self) -> None:
        """POST /retrain or /upload_and_retrain; a 409 (a job already runs) is followed like our own."""
        action = os.environ.get("LOCUST_ADMIN_ACTION", "retrain").strip().lower()
        epochs = int(_env_float("LOCUST_RETRAIN_EPOCHS", 1))
        if action == "upload":
            body = multipart_body(
                [
                    multipart_part("file", "samples.zip", samples_zip(SAMPLES), "application/zip"),
                    multipart_field("epochs", str(epochs)),
                ]
            )
            request = dict(data=body, headers={**self.auth, "Content-Type": MULTIPART})
            path = "/upload_and_retrain"
        else:
            options = {"epochs": epochs, "from": os.environ.get("LOCUST_RETRAIN_FROM", "active")}
            request = dict(json=options, headers=self.auth)
            path = "/retrain"
        with self.client.post(path, name=path, catch_response=True, **request) as response:
            if response.status_code == 404:
                response.failure(f"{path} answered 404: this backend has no retraining API yet")
                self.done = True
                return
            body = check_json(response, _has("job_id", str), expected=(202, 409))
        if body is None:
            self.done = True  # a rejected start (401, 400...) would only repeat; the failure is recorded
            return
        self.job_id = body["job_id"]
        self.owns_job = response.status_code == 202
        self.status_url = body.get("status_url") or f"/jobs/{self.job_id}"
        set_phase("2 job running (train, gate, swap)")
        self._note("already-running" if response.status_code == 409 else "submitted", body)

    def poll(self) -> None:
        """GET the job's status and note every change."""
        with self.client.get(self.status_url, name="/jobs/[id]", catch_response=True) as response:
            body = check_json(response, _job_problem)
            if body is None:
                body = _json_or_none(response) or {}
        status = body.get("status")
        if status and status != self.last_status:
            self._note(status, body)
        if status in TERMINAL_JOB_STATES:
            self.done = self.finished = True
            set_phase(f"3 after job ({status})")
            candidate = (body.get("result") or {}).get("candidate")
            if status == "rejected" and candidate and os.environ.get("LOCUST_FORCE_SWAP", "") not in ("", "0"):
                self.activate(candidate)
            linger = os.environ.get("LOCUST_STOP_AFTER_JOB", "").strip()
            if linger:  # keep serving load for a while after the swap, then end the run early
                log.info("job ended; stopping the run in %s s (LOCUST_STOP_AFTER_JOB)", linger)
                gevent.spawn_later(float(linger), self.environment.runner.quit)

    def activate(self, version: str) -> None:
        """Activate a candidate the gate rejected, so the run still measures a hot swap (test stores only)."""
        with self.client.post(
            f"/models/{version}/activate", headers=self.auth, name="/models/[version]/activate", catch_response=True
        ) as response:
            body = check_json(response, _has("active", str))
        if body is not None:
            set_phase("3 after job (rejected, activated by hand)")
            self._note("activated by hand", body)

    def _note(self, status: str, body: dict) -> None:
        """Record a job status change with its time."""
        self.last_status = status
        detail = body.get("result") or body.get("error") or body.get("dataset") or body.get("active") or ""
        JOB_EVENTS.append(
            {
                "timestamp": time.time(),
                "job_id": self.job_id,
                "status": status,
                "progress": body.get("progress", ""),
                "detail": json.dumps(detail) if detail else "",
            }
        )
        log.info("job %s: %s %s", self.job_id, status, json.dumps(detail)[:300] if detail else "")


# ---------------------------------------------------------------------------------------------
# Exact per-step and per-phase figures. Locust's history only has 10 s window percentiles, too
# coarse to tell a load step or a retrain phase from its neighbours.


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


def percentile(sorted_values: list[float], share: float) -> float:
    """Return the nearest-rank percentile of already sorted values (NaN when empty)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(share * len(sorted_values)) - 1))]


STEPS = Buckets()  # step index -> figures, when the step shape runs
PHASES = Buckets()  # retrain phase -> /predict figures, when an AdminUser runs
_STATE: dict[str, Any] = {"env": None, "phase": None}


def set_phase(name: str | None) -> None:
    """Name the retrain phase that /predict requests from now on belong to."""
    _STATE["phase"] = name


# ---------------------------------------------------------------------------------------------
# Step load shape: find the knee of the throughput curve.


def _step_shape_wanted() -> bool:
    """Tell whether to offer the step shape: LOCUST_SHAPE=step, or the web UI's picker."""
    return os.environ.get("LOCUST_SHAPE", "").strip().lower() == "step" or "--class-picker" in sys.argv[1:]


class StepLoadShape(LoadTestShape):
    """LOCUST_STEP_USERS more users every LOCUST_STEP_SECONDS for LOCUST_STEP_COUNT steps, then stop."""

    # A shape in the locustfile replaces -u/-r for every run, so it only exists when asked for.
    abstract = not _step_shape_wanted()

    step_users = int(_env_float("LOCUST_STEP_USERS", 40))
    step_seconds = _env_float("LOCUST_STEP_SECONDS", 10)
    step_count = int(_env_float("LOCUST_STEP_COUNT", 6))
    settle_seconds = _env_float("LOCUST_STEP_SETTLE", 3)  # left out of each step's figures: users still arriving

    def tick(self) -> tuple[int, float] | None:
        """Return the user count for the current step, or None once the last step is over."""
        step = int(self.get_run_time() // self.step_seconds)
        if step >= self.step_count:
            return None
        return (step + 1) * self.step_users, float(self.step_users)

    def current_step(self) -> tuple[int, bool]:
        """Return the step index and whether it has settled enough to be measured."""
        elapsed = self.get_run_time()
        return int(elapsed // self.step_seconds), elapsed % self.step_seconds >= self.settle_seconds


@events.init.add_listener
def _remember_env(environment: Environment, **kwargs: Any) -> None:
    """Keep the environment for the request listener, which Locust calls without it."""
    _STATE["env"] = environment


@events.request.add_listener
def _collect(name: str, response_time: float, exception: Exception | None, **kwargs: Any) -> None:
    """File each request under its load step and each /predict under its retrain phase."""
    environment = _STATE["env"]
    if environment is None:
        return
    now, failed = time.time(), exception is not None
    users = environment.runner.user_count if environment.runner else 0
    shape = environment.shape_class
    if isinstance(shape, StepLoadShape):
        step, settled = shape.current_step()
        if settled:
            STEPS.add(step + 1, users, response_time, failed, now)
    if _STATE["phase"] and name.startswith("/predict ["):
        PHASES.add(_STATE["phase"], users, response_time, failed, now)


# ---------------------------------------------------------------------------------------------
# Run bookkeeping and the pass/fail gate


@events.test_start.add_listener
def _reset(environment: Environment, **kwargs: Any) -> None:
    """Drop users that --tags left without tasks, and start with empty timelines."""
    # Locust has just filtered tasks by tag; a user class without tasks would fail to spawn.
    idle = [user.__name__ for user in environment.user_classes if not user.tasks]
    if idle:
        log.info("no tasks left after tag filtering, not running: %s", ", ".join(idle))
        environment.user_classes[:] = [user for user in environment.user_classes if user.tasks]
    VERSIONS.reset()
    JOB_EVENTS.clear()
    STEPS.groups.clear()
    PHASES.groups.clear()
    set_phase(None)


@events.test_stop.add_listener
def _write_timelines(environment: Environment, **kwargs: Any) -> None:
    """Write the model-version, job, step and phase figures next to Locust's CSVs (with --csv)."""
    prefix = getattr(environment.parsed_options, "csv_prefix", None) if environment.parsed_options else None
    for row in VERSIONS.rows():
        log.info(
            "model %s served %d checked responses from %.3f to %.3f",
            row["version"],
            row["responses"],
            row["first_seen"],
            row["last_seen"],
        )
    if not prefix:
        return
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    _write_csv(
        Path(f"{prefix}_model_versions.csv"), VERSIONS.rows(), ["version", "first_seen", "last_seen", "responses"]
    )
    _write_csv(Path(f"{prefix}_jobs.csv"), JOB_EVENTS, ["timestamp", "job_id", "status", "progress", "detail"])
    for buckets, key, suffix in ((STEPS, "step", "steps"), (PHASES, "phase", "phases")):
        rows = buckets.rows(key)
        if rows:
            _write_csv(Path(f"{prefix}_{suffix}.csv"), rows, list(rows[0]))


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


@events.quitting.add_listener
def _gate(environment: Environment, **kwargs: Any) -> None:
    """Set a non-zero exit code when the failure ratio or p95 is over its bound; save the final figures."""
    # Locust's CSVs are rewritten every second and can miss the last one; these figures are final.
    prefix = getattr(environment.parsed_options, "csv_prefix", None) if environment.parsed_options else None
    if prefix:
        Path(f"{prefix}_final.json").write_text(json.dumps(final_stats(environment), indent=1) + "\n")
    total = environment.stats.total
    problems = gate_problems(
        total.fail_ratio,
        total.get_response_time_percentile(0.95) or 0.0,
        total.num_requests,
        _env_bound("LOCUST_MAX_FAIL_RATIO", 0.01),
        _env_bound("LOCUST_MAX_P95_MS", 1000.0),
    )
    for problem in problems:
        log.error("load test failed: %s", problem)
    environment.process_exit_code = 1 if problems else 0
