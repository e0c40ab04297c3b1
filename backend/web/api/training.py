"""Retraining endpoints: MNIST retrains, ZIP uploads, job status and cancel, model activation."""

from __future__ import annotations

import re

from apiflask import APIBlueprint, abort
from flask import current_app, request, url_for
from redis.exceptions import RedisError

from backend.core import budget
from backend.core.inference import verify_version
from backend.core.store import ActivationConflictError, CorruptVersionError, VersionNotFoundError
from backend.data.datasets import (
    DatasetRejectedError,
    ZipLimits,
    dataset_summary,
    ingest_zip,
    list_datasets,
)
from backend.data.jobs import (
    FAILED,
    MAX_EPOCHS,
    UNFINISHED,
    JobAlreadyEndedError,
    JobConflictError,
    JobNotFoundError,
    JobStore,
    default_epochs,
)
from backend.web.api.auth import auth
from backend.web.api.schemas import (
    Activation,
    DatasetList,
    Job,
    JobAccepted,
    JobList,
    RetrainRequest,
    ZipUpload,
    error_responses,
)
from backend.web.api.services import services

bp = APIBlueprint("training", __name__, tag="Training")


def _jobs() -> JobStore:
    """Return the job store of this app."""
    return services().jobs


def _conflict(exc: JobConflictError) -> tuple[dict, int]:
    """Answer 409 naming the job that is still running."""
    return {"error": str(exc), "job_id": exc.job_id}, 409


def _start(kind: str, params: dict, epochs: int) -> dict:
    """Queue a job, start its process and return the 202 body."""
    job = _jobs().create(kind, params, epochs)
    config = current_app.config
    env = {
        "MODEL_DIR": str(config["MODEL_DIR"]),
        "DATA_DIR": str(config["DATA_DIR"]),
        "GATE_MAX_MNIST_DROP": str(config["GATE_MAX_MNIST_DROP"]),
    }
    for optional in ("MNIST_PATH", "DATABASE_URL"):
        if config[optional]:
            env[optional] = str(config[optional])
    try:
        _jobs().dispatch(job["id"], env)
    except (OSError, RedisError) as exc:
        _jobs().finish(job["id"], FAILED, error=f"Could not start the training job: {exc}")
        abort(503, f"Could not start the training job: {exc}")
    return {"job_id": job["id"], "status_url": url_for("training.get_job", job_id=job["id"])}


@bp.post("/retrain")
@bp.auth_required(auth)
@bp.input(RetrainRequest, location="json", arg_name="options")
@bp.output(JobAccepted, status_code=202, description="The job was queued")
@bp.doc(
    summary="Retrain on MNIST (optionally with uploads and feedback)",
    responses=error_responses(
        {400: "Bad options", 401: "Missing or wrong admin token", 409: "A job is already running"}
    ),
)
def retrain(options: dict) -> tuple[dict, int]:
    """Start a retraining job on MNIST, from scratch or from the active model."""
    start_from = options["from_"]
    params = {
        "from": start_from,
        "include_uploads": options["include_uploads"],
        "include_feedback": options["include_feedback"],
        "seed": options["seed"],
    }
    epochs = options["epochs"] or default_epochs("retrain", start_from)
    try:
        return _start("retrain", {**params, "epochs": epochs}, epochs), 202
    except JobConflictError as exc:
        return _conflict(exc)


@bp.post("/upload_and_retrain")
@bp.auth_required(auth)
@bp.input(ZipUpload, location="files", validation=False)
@bp.output(JobAccepted, status_code=202, description="The dataset was stored and a fine-tuning job queued")
@bp.doc(
    summary="Upload a ZIP of folders 0-9 and fine-tune the active model on it",
    responses=error_responses(
        {
            400: "Not a usable ZIP",
            401: "Missing or wrong admin token",
            409: "A job is already running",
            413: "ZIP too large",
            422: "No usable images",
        }
    ),
)
def upload_and_retrain(files_data: dict) -> tuple[dict, int]:
    """Validate and store a ZIP dataset, then start a fine-tuning job on it."""
    upload = request.files.get("file") or request.files.get("zipfile")
    if upload is None:
        abort(400, "No ZIP in multipart field 'file' (or 'zipfile'): send a .zip with folders 0-9.")
    epochs_field = request.form.get("epochs", "")
    # ASCII digits only: str.isdigit() accepts '²', which int() then refuses.
    if epochs_field and (not re.fullmatch(r"[0-9]{1,9}", epochs_field) or not 1 <= int(epochs_field) <= MAX_EPOCHS):
        abort(400, f"'epochs' must be a whole number from 1 to {MAX_EPOCHS}, in ASCII digits.")
    running = [job for job in _jobs().list(limit=5) if job["status"] in UNFINISHED]
    if running:  # refuse before storing anything
        return _conflict(JobConflictError(running[0]["id"]))
    config = current_app.config
    limits = ZipLimits(config["ZIP_MAX_ENTRIES"], int(config["ZIP_MAX_MB"] * 1024 * 1024), config["ZIP_MAX_RATIO"])
    budget.start(None)  # an admin's ZIP of thousands of images takes longer; the ZIP limits bound it instead
    try:
        manifest = ingest_zip(upload.read(), config["DATA_DIR"] / "datasets", limits, upload.filename or "upload.zip")
    except DatasetRejectedError as exc:
        abort(exc.status, exc.message)
    epochs = int(epochs_field) if epochs_field else default_epochs("upload_and_retrain", "active")
    params = {"datasets": [manifest["id"]], "epochs": epochs}
    try:
        accepted = _start("upload_and_retrain", params, epochs)
    except JobConflictError as exc:
        body, status = _conflict(exc)
        return {**body, "dataset": dataset_summary(manifest)}, status
    return {**accepted, "dataset": dataset_summary(manifest)}, 202


@bp.get("/jobs")
@bp.output(JobList)
@bp.doc(summary="Recent jobs, newest first")
def list_jobs() -> dict:
    """List recent training jobs."""
    return {"jobs": _jobs().list()}


@bp.get("/jobs/<job_id>")
@bp.output(Job)
@bp.doc(
    summary="A job's status, progress, live history, log tail, result and error",
    responses=error_responses({404: "No such job"}),
)
def get_job(job_id: str) -> dict:
    """Return one job."""
    try:
        return _jobs().get(job_id)
    except JobNotFoundError as exc:
        abort(404, str(exc))


@bp.post("/jobs/<job_id>/cancel")
@bp.auth_required(auth)
@bp.output(Job)
@bp.doc(
    summary="Cancel a queued or running job (the active model is never changed)",
    description="The job ends `cancelled` at once and its process is stopped. A job that already ended "
    "another way (e.g. it promoted its candidate a moment earlier) is left as it is: 409 says what happened.",
    responses=error_responses({401: "Missing or wrong admin token", 404: "No such job", 409: "The job already ended"}),
)
def cancel_job(job_id: str) -> dict:
    """Cancel a job."""
    try:
        return _jobs().cancel(job_id)
    except JobNotFoundError as exc:
        abort(404, str(exc))
    except JobAlreadyEndedError as exc:
        abort(409, str(exc))


@bp.post("/models/<version>/activate")
@bp.auth_required(auth)
@bp.output(Activation)
@bp.doc(
    summary="Make a stored version active (promotion by hand, or rollback)",
    description="The version is checked first: its file hashes, a LiteRT load, its shapes and a probe prediction. "
    "A damaged version is refused with 422. The pointer moves only if no other activation moved it since it was "
    "read (409 otherwise); either way a refused activation leaves the active version as it was.",
    responses=error_responses(
        {
            401: "Missing or wrong admin token",
            404: "No such version",
            409: "Another activation changed the active version meanwhile",
            422: "The version is damaged or is not a digit model",
        }
    ),
)
def activate(version: str) -> dict:
    """Point ACTIVE at a verified version; every worker serves it on its next request."""
    store = services().store
    previous = store.active_version()
    try:
        verify_version(store, version)
        store.activate(version, expected=previous)
    except VersionNotFoundError as exc:
        abort(404, f"{exc} GET /models lists the versions.")
    except CorruptVersionError as exc:
        abort(422, f"Version {version} was not activated: {exc}")
    except ActivationConflictError as exc:
        abort(409, f"Version {version} was not activated: {exc}. GET /model shows the active version; try again.")
    return {"active": version, "previous": previous}


@bp.get("/datasets")
@bp.output(DatasetList)
@bp.doc(summary="Uploaded datasets, oldest first")
def datasets() -> dict:
    """List stored uploads with their per-class counts and skipped files."""
    return {"datasets": [dataset_summary(m) for m in list_datasets(current_app.config["DATA_DIR"] / "datasets")]}
