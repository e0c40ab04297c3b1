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
                         LOCUST_JOB_TIMEOUT seconds after which the job is no longer polled (600),
                         LOCUST_STOP_AFTER_JOB=S to end the run S seconds after the job ends
                         (a job the run started and that is still going when the run ends is cancelled);
                         LOCUST_FORCE_SWAP=1 activates a candidate the promotion gate rejected, so the
                         run still sees a hot swap (only on a store you can spare)
  ADMIN_TOKEN            the admin token; else read from $DATA_DIR/admin_token (DATA_DIR defaults to the repo's data/)
  LOCUST_CLIENT          fast (default: FastHttpUser, geventhttpclient) or requests (HttpUser): the same
                         requests, to compare what the two clients cost (docs/load-testing.md)
Distributed: `locust -f locustfile.py --processes 4 ...` (a master and 4 local workers), or a master
(`--master --expect-workers N`) with workers elsewhere (`locust -f locustfile.py --worker --master-host M`,
given the same class names, --tags and LOCUST_* variables). The workers send their records to the master,
which writes the files below; the job's phase and its end reach every worker.
With --csv PREFIX the run also writes PREFIX_model_versions.csv (first and last time each model
version answered: the swap moment), PREFIX_jobs.csv, and exact per-step (PREFIX_steps.csv) or
per-retrain-phase (PREFIX_phases.csv) figures. benchmarks/loadtest.py turns them into a report.
Request bodies, response checks, these records, the job and the exit gate live in benchmarks/locustkit/.
"""

from __future__ import annotations

import random
import sys
import time

from locust import FastHttpUser, HttpUser, LoadTestShape, between, constant, tag, task

from benchmarks.locustkit import hooks
from benchmarks.locustkit.admin import JobDriver
from benchmarks.locustkit.bodies import MULTIPART, SAMPLES, multipart_body
from benchmarks.locustkit.checks import (
    batch_problem,
    check_json,
    check_metrics,
    has,
    health_problem,
    prediction_problem,
)
from benchmarks.locustkit.records import RUN, predict_name
from benchmarks.locustkit.settings import admin_requested, env_float, http_client, step_shape_wanted

hooks.register()

# Bodies are pre-encoded bytes (no `files=`), so both clients send the same requests and every endpoint,
# the multipart ones included, works on FastHttpUser; HttpUser is there to measure what a client costs.
ClientUser = HttpUser if http_client() == "requests" else FastHttpUser


class PredictUser(ClientUser):
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
            name=predict_name(sample.style),
            catch_response=True,
        ) as response:
            body = check_json(response, prediction_problem)
        if body is not None:
            RUN.versions.saw(body["model_version"], time.time())


class BatchUser(ClientUser):
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
            RUN.versions.saw(result["predictions"][0]["model_version"], time.time())


class DashboardUser(ClientUser):
    """Polls the operational endpoints at a low rate, as the dashboard and Prometheus do."""

    weight = 1
    wait_time = between(2, 5)

    @tag("dashboard")
    @task(3)
    def health(self) -> None:
        """GET /health: must say ok and name the served version."""
        with self.client.get("/health", name="/health", catch_response=True) as response:
            check_json(response, health_problem)

    @tag("dashboard")
    @task
    def model(self) -> None:
        """GET /model: the active version's metadata."""
        with self.client.get("/model", name="/model", catch_response=True) as response:
            check_json(response, has("version", str))

    @tag("dashboard")
    @task
    def models(self) -> None:
        """GET /models: every stored version."""
        with self.client.get("/models", name="/models", catch_response=True) as response:
            check_json(response, has("versions", list))

    @tag("dashboard")
    @task
    def metrics(self) -> None:
        """GET /metrics: Prometheus text with the app's own series."""
        with self.client.get("/metrics", name="/metrics", catch_response=True) as response:
            check_metrics(response)


class AdminUser(ClientUser):
    """Starts one retrain (or ZIP upload) and polls its job to the end, then idles."""

    # Off by default: Locust drops weight-0 classes before any event hook runs, so the command line
    # (the class name or the admin tag) turns it on here; in the web UI set its fixed_count to 1.
    weight = 0
    fixed_count = 1 if admin_requested(sys.argv[1:]) else 0
    wait_time = constant(1)

    def on_start(self) -> None:
        """Prepare the job; /predict requests from now on count as before it."""
        self.job = JobDriver(self.client, self.environment)

    @tag("admin")
    @task
    def drive(self) -> None:
        """Start the job once, then poll it every second until it ends."""
        self.job.step()

    def on_stop(self) -> None:
        """Cancel our job if the run ends before it does, so no training outlives the load test."""
        self.job.cancel_unfinished()


class StepLoadShape(LoadTestShape):
    """LOCUST_STEP_USERS more users every LOCUST_STEP_SECONDS for LOCUST_STEP_COUNT steps, then stop."""

    # A shape in the locustfile replaces -u/-r for every run, so it only exists when asked for.
    abstract = not step_shape_wanted(sys.argv[1:])

    step_users = int(env_float("LOCUST_STEP_USERS", 40))
    step_seconds = env_float("LOCUST_STEP_SECONDS", 10)
    step_count = int(env_float("LOCUST_STEP_COUNT", 6))
    settle_seconds = env_float("LOCUST_STEP_SETTLE", 3)  # left out of each step's figures: users still arriving

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
