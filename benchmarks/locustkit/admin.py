"""The AdminUser's job: start one retrain (or ZIP upload), poll it every second, cancel it if the run ends first."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import gevent

from backend.core.config import Settings
from backend.data.jobs import REJECTED
from backend.web.api.auth import TOKEN_FILE
from benchmarks.locustkit import log
from benchmarks.locustkit.bodies import MULTIPART, SAMPLES, upload_body
from benchmarks.locustkit.checks import FINISHED, check_json, has, job_problem, json_or_none
from benchmarks.locustkit.hooks import end_run, share_phase
from benchmarks.locustkit.records import PHASE_BEFORE, PHASE_RUNNING, RUN, RunRecord, phase_after
from benchmarks.locustkit.settings import env_float

if TYPE_CHECKING:
    from locust.clients import HttpSession
    from locust.contrib.fasthttp import FastHttpSession
    from locust.env import Environment


def admin_token() -> str | None:
    """Return ADMIN_TOKEN, else the token the backend wrote to $DATA_DIR/admin_token, else None."""
    settings = Settings()
    if settings.admin_token:
        return settings.admin_token
    path = settings.data_dir / TOKEN_FILE
    return path.read_text().strip() if path.is_file() else None


class JobDriver:
    """Starts one job after LOCUST_ADMIN_DELAY seconds and follows it to its end, then does nothing."""

    def __init__(
        self, client: FastHttpSession | HttpSession, environment: Environment, record: RunRecord = RUN
    ) -> None:
        """Prepare the job state and the admin header; /predict requests now count as before the job."""
        self.client = client
        self.environment = environment
        self.record = record
        self.job_id: str | None = None
        self.owns_job = False  # False when a 409 handed us someone else's running job
        self.status_url: str | None = None
        self.last_status: str | None = None
        self.done = False  # nothing more to do: job over, polling given up, or the start refused
        self.finished = False  # the job itself reached a final state
        self.start_at = time.time() + env_float("LOCUST_ADMIN_DELAY", 5)  # a baseline before training starts
        self.deadline = self.start_at + env_float("LOCUST_JOB_TIMEOUT", 600)
        token = admin_token()
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.enter_phase(PHASE_BEFORE)

    def step(self) -> None:
        """Start the job once it is time, then poll it until it ends (call about once a second)."""
        if self.done or time.time() < self.start_at:
            return
        if self.job_id is None:
            self.start()
        elif time.time() > self.deadline:
            log.warning("job %s still not finished after LOCUST_JOB_TIMEOUT; no longer polling", self.job_id)
            self.done = True
        else:
            self.poll()

    def cancel_unfinished(self) -> None:
        """Cancel our job if it is still going, so no training outlives the load test."""
        if self.job_id and self.owns_job and not self.finished:
            with self.client.post(
                f"/jobs/{self.job_id}/cancel", headers=self.auth, name="/jobs/[id]/cancel", catch_response=True
            ) as response:
                body = check_json(response, has("status", str))
            self.note("cancelled by the load test", body or {})

    def start(self) -> None:
        """POST /retrain or /upload_and_retrain (LOCUST_ADMIN_ACTION); a 409 is followed like our own job."""
        action = os.environ.get("LOCUST_ADMIN_ACTION", "retrain").strip().lower()
        epochs = int(env_float("LOCUST_RETRAIN_EPOCHS", 1))
        if action == "upload":
            request: dict[str, Any] = {
                "data": upload_body(SAMPLES, epochs),
                "headers": {**self.auth, "Content-Type": MULTIPART},
            }
            path = "/upload_and_retrain"
        else:
            options = {"epochs": epochs, "from": os.environ.get("LOCUST_RETRAIN_FROM", "active")}
            request = {"json": options, "headers": self.auth}
            path = "/retrain"
        with self.client.post(path, name=path, catch_response=True, **request) as response:
            body = check_json(response, has("job_id", str), expected=(202, 409))
        if body is None:
            self.done = True  # a refused start (401, 400, 404...) would only repeat; the failure is recorded
            return
        self.job_id = body["job_id"]
        self.owns_job = response.status_code == 202
        self.status_url = body.get("status_url") or f"/jobs/{self.job_id}"
        self.enter_phase(PHASE_RUNNING)
        self.note("already-running" if response.status_code == 409 else "submitted", body)

    def poll(self) -> None:
        """GET the job's status and note every change; once it ends, maybe force the swap and end the run."""
        with self.client.get(self.status_url, name="/jobs/[id]", catch_response=True) as response:
            body = check_json(response, job_problem)
            if body is None:
                body = json_or_none(response) or {}
        status = body.get("status")
        if status and status != self.last_status:
            self.note(status, body)
        if status not in FINISHED:
            return
        self.done = self.finished = True
        self.enter_phase(phase_after(status))
        candidate = (body.get("result") or {}).get("candidate")
        if status == REJECTED and candidate and os.environ.get("LOCUST_FORCE_SWAP", "") not in ("", "0"):
            self.activate(candidate)
        linger = os.environ.get("LOCUST_STOP_AFTER_JOB", "").strip()
        if linger:  # keep serving load for a while after the swap, then end the run early
            log.info("job ended; stopping the run in %s s (LOCUST_STOP_AFTER_JOB)", linger)
            gevent.spawn_later(float(linger), end_run, self.environment)

    def activate(self, version: str) -> None:
        """Activate a candidate the gate rejected, so the run still measures a hot swap (test stores only)."""
        with self.client.post(
            f"/models/{version}/activate", headers=self.auth, name="/models/[version]/activate", catch_response=True
        ) as response:
            body = check_json(response, has("active", str))
        if body is not None:
            self.enter_phase(phase_after(f"{REJECTED}, activated by hand"))
            self.note("activated by hand", body)

    def enter_phase(self, phase: str) -> None:
        """Count /predict requests from now on under `phase`, on every worker in distributed mode."""
        self.record.phase = phase
        share_phase(self.environment, phase)

    def note(self, status: str, body: dict[str, Any]) -> None:
        """Record a job status change."""
        self.last_status = status
        self.record.note_job(self.job_id, status, body)
