"""Feedback on wrong predictions: anonymous, bounded writes; admin review, listing and export."""

from __future__ import annotations

import math
import re
import time

from apiflask import APIBlueprint, APIFlask, abort
from apiflask.exceptions import HTTPError
from flask import Response, current_app, jsonify, request
from flask_limiter import Limiter, RequestLimit
from flask_limiter.errors import RateLimitExceeded
from flask_limiter.util import get_remote_address

from backend.data.feedback import MAX_TEXT_CHARS, STATUSES, FeedbackQuotaError
from backend.web.api.auth import auth
from backend.web.api.predict import stem_upload
from backend.web.api.schemas import (
    DIGIT_PATTERN,
    FeedbackCreated,
    FeedbackForm,
    FeedbackList,
    FeedbackQuery,
    FeedbackRecord,
    FeedbackReview,
    error_responses,
)
from backend.web.api.services import services

bp = APIBlueprint("feedback", __name__, tag="Feedback")

ADMIN_ERRORS = {401: "Missing or wrong admin token"}
NOT_FOUND = "No feedback record {id!r}: list them with GET /feedback."
PNG_RESPONSE = {
    200: {
        "description": "The 28x28 grey model input",
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
    }
}
ZIP_RESPONSE = {
    200: {
        "description": "ZIP archive",
        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
    }
}


class StorageFull(HTTPError):
    """507 Insufficient Storage: werkzeug has no exception for it, so apiflask's abort() cannot raise it."""

    status_code = 507


def init_rate_limit(app: APIFlask) -> Limiter:
    """Give the app its own limiter (RATELIMIT_STORAGE_URI) and cap POST /feedback per client at FEEDBACK_RATE_LIMIT."""
    # swallow_errors: an unreachable limit store lets feedback through (and logs it) rather than failing it.
    limiter = Limiter(get_remote_address, app=app, storage_uri=app.config["RATELIMIT_STORAGE_URI"], swallow_errors=True)
    endpoint = f"{bp.name}.{add_feedback.__name__}"
    # Wrapping this app's view (not the module's function) keeps each app's counters to itself.
    app.view_functions[endpoint] = limiter.limit(_feedback_rate_limit, on_breach=_rate_limited)(
        app.view_functions[endpoint]
    )
    _drop_app_wide_hooks(app, limiter)
    return limiter


def _drop_app_wide_hooks(app: APIFlask, limiter: Limiter) -> None:
    """Unhook the limiter from requests it never limits: the wrapped view checks its own limit.

    Its before/after_request hooks serve default and application-wide limits and rate-limit headers,
    none of which this app uses, and cost about 70 us on every request (/predict included).
    """
    app.before_request_funcs[None] = [
        f for f in app.before_request_funcs[None] if getattr(f, "__self__", None) is not limiter
    ]
    app.after_request_funcs[None] = [f for f in app.after_request_funcs[None] if limiter not in getattr(f, "args", ())]


def _feedback_rate_limit() -> str:
    """Read the current app's FEEDBACK_RATE_LIMIT, e.g. '30 per minute'."""
    return current_app.config["FEEDBACK_RATE_LIMIT"]


def _rate_limited(breach: RequestLimit) -> Response:
    """Answer a client over the limit with JSON 429 and Retry-After (seconds)."""
    retry_after = max(1, math.ceil(breach.reset_at - time.time()))
    response = jsonify(
        {
            "error": f"Too many feedback posts from this client (limit {breach.limit}, "
            f"FEEDBACK_RATE_LIMIT): try again in {retry_after} s."
        }
    )
    response.status_code = 429
    response.headers["Retry-After"] = str(retry_after)
    return response


@bp.errorhandler(RateLimitExceeded)
def _too_many(exc: RateLimitExceeded) -> Response | tuple[dict, int]:
    """Send the JSON answer built by _rate_limited rather than the generic 429."""
    if exc.response is not None:
        return exc.response
    return {"error": f"Too many requests from this client ({exc.description}): wait a minute and retry."}, 429


def _digit(name: str) -> int | None:
    """Read an optional form field holding one ASCII digit 0-9 (not '²' or '٣', which isdigit() accepts)."""
    raw = request.form.get(name, "").strip()
    if not raw:
        return None
    if not re.fullmatch(DIGIT_PATTERN, raw):
        abort(400, f"Form field '{name}' must be one digit 0-9, not {raw[:16]!r}.")
    return int(raw)


def _short_text(name: str) -> str | None:
    """Read an optional printable form field of at most MAX_TEXT_CHARS characters."""
    raw = request.form.get(name, "").strip()
    if not raw:
        return None
    if len(raw) > MAX_TEXT_CHARS or not raw.isprintable():
        abort(
            400, f"Form field '{name}' must be at most {MAX_TEXT_CHARS} printable characters, like 'v20240101-120000'."
        )
    return raw


def _quota_bytes() -> int:
    """Return FEEDBACK_MAX_MB in bytes."""
    return int(float(current_app.config["FEEDBACK_MAX_MB"]) * 1024 * 1024)


@bp.post("/feedback")
@bp.input(FeedbackForm, location="files", validation=False)
@bp.output(FeedbackCreated, status_code=201, description="Stored as a new record")
@bp.doc(
    summary="Report the right digit for an image the model got wrong",
    description="Only the image's 28x28 model input is stored, as a small PNG, and it waits for an admin to "
    "accept it before any retraining uses it. The same image with the same label again answers "
    "200 with the existing record and stores nothing.",
    responses={
        200: {
            "description": "Already stored: the existing record",
            "content": {"application/json": {"schema": FeedbackCreated}},
        },
        **error_responses(
            {
                400: "Bad label, field or image",
                413: "Upload too large",
                422: "A blank image: no digit stands out",
                429: "Too many feedback posts from this client (FEEDBACK_RATE_LIMIT); see Retry-After",
                503: "The request ran over its time budget",
                507: "Feedback storage is full (FEEDBACK_MAX_MB)",
            }
        ),
    },
)
def add_feedback(files_data: dict) -> tuple[dict, int]:
    """Store the image's model input with its right label, pending review; answer 201, or 200 for a duplicate."""
    upload = request.files.get("file")
    if upload is None:
        abort(400, "No image in multipart field 'file': send the image and form field 'label' (0-9).")
    if "label" not in request.form:
        abort(400, "Form field 'label' is missing: send the right digit 0-9.")
    label = _digit("label")
    if label is None:
        abort(400, "Form field 'label' must be one digit 0-9.")
    predicted = _digit("predicted")
    model_version = _short_text("model_version")
    model_input = stem_upload(upload.read())
    try:
        record, created = services().feedback.add(
            model_input,
            label,
            predicted=predicted,
            model_version=model_version,
            filename=upload.filename,
            max_bytes=_quota_bytes(),
        )
    except FeedbackQuotaError as exc:
        raise StorageFull(message=exc.message) from None
    return {"id": record["id"], "status": record["status"], "duplicate": not created}, 201 if created else 200


@bp.get("/feedback")
@bp.auth_required(auth)
@bp.input(FeedbackQuery, location="query")
@bp.output(FeedbackList)
@bp.doc(summary="List feedback records with their review state", responses=error_responses(ADMIN_ERRORS))
def list_feedback(query_data: dict) -> dict:
    """List feedback records (optionally one review state, or the first few), their counts and the storage they use."""
    store = services().feedback
    return {
        "feedback": store.list(query_data["status"], query_data["limit"]),
        "counts": store.counts(),
        "used_bytes": store.used_bytes(),
        "quota_bytes": _quota_bytes(),
    }


@bp.post("/feedback/<feedback_id>/review")
@bp.auth_required(auth)
@bp.input(FeedbackReview, location="json")
@bp.output(FeedbackRecord)
@bp.doc(
    summary="Accept or reject a feedback record (only accepted ones are trained on)",
    responses=error_responses(
        {**ADMIN_ERRORS, 400: f"Status is not one of {', '.join(STATUSES)}", 404: "No such feedback record"}
    ),
)
def review_feedback(feedback_id: str, json_data: dict) -> dict:
    """Set one record's review state."""
    record = services().feedback.review(feedback_id, json_data["status"])
    if record is None:
        abort(404, NOT_FOUND.format(id=feedback_id))
    return record


@bp.get("/feedback/<feedback_id>.png")
@bp.auth_required(auth)
@bp.doc(
    summary="One feedback record's stored image: the 28x28 model input",
    responses={**PNG_RESPONSE, **error_responses({**ADMIN_ERRORS, 404: "No such record, or its image is gone"})},
)
def feedback_image(feedback_id: str) -> Response:
    """Return the grey PNG that training with this record would use."""
    store = services().feedback
    record = store.get(feedback_id)
    if record is None:
        abort(404, NOT_FOUND.format(id=feedback_id))
    try:
        png = store.model_input_png(record)
    except (OSError, ValueError):
        abort(404, f"The image of feedback record {feedback_id!r} is missing or unreadable on the server.")
    return Response(png, mimetype="image/png")


@bp.get("/feedback/export")
@bp.auth_required(auth)
@bp.input(FeedbackQuery, location="query")
@bp.doc(
    summary="Download feedback as a ZIP of folders 0-9 (the /upload_and_retrain layout)",
    description="Streamed entry by entry. feedback.json lists every record with its review state; one whose "
    'image is gone from the server is marked "missing": true and left out of the folders.',
    responses={**ZIP_RESPONSE, **error_responses(ADMIN_ERRORS)},
)
def export_feedback(query_data: dict) -> Response:
    """Stream feedback images (optionally one review state) as a ZIP in the 0/…9/ layout."""
    store = services().feedback
    records = store.list(query_data["status"], query_data["limit"])
    return Response(
        store.export_zip(records),
        mimetype="application/zip",
        headers={"Content-Disposition": "attachment; filename=feedback.zip"},
    )
