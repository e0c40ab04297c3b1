"""The Flask application factory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from apiflask import APIFlask
from apiflask.exceptions import HTTPError
from flask import Response, current_app, request, send_from_directory
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from backend.api import extras, mnist, models, predict, training
from backend.api.auth import ensure_admin_token
from backend.api.schemas import ERROR_SPEC
from backend.api.services import Services
from backend.config import Settings
from backend.feedback import FeedbackStore
from backend.inference import ActiveModel, ReloadEvent
from backend.jobs import JobStore
from backend.observability import RELOADS, configure_logging, init_request_metrics, record_model_served
from backend.store import ModelStore

API_VERSION = "1.0"
log = logging.getLogger(__name__)

HINTS = {
    404: "No such endpoint: {method} {path}. The API is described at /docs and /openapi.json.",
    405: "{method} is not allowed on {path}: use {allowed}.",
    413: "The upload is over the {limit} MB limit (MAX_UPLOAD_MB): send a smaller file.",
}


def create_app(config: dict[str, Any] | None = None) -> APIFlask:
    """Build the API app; `config` overrides settings read from the environment (see README)."""
    app = APIFlask(__name__, title="Digit Lab API", version=API_VERSION, docs_path="/docs", spec_path="/openapi.json")
    app.config.update(Settings().as_flask_config())
    app.config.update(config or {})
    app.config.update(
        MAX_CONTENT_LENGTH=int(float(app.config["MAX_UPLOAD_MB"]) * 1024 * 1024),
        HTTP_ERROR_SCHEMA=ERROR_SPEC,
        VALIDATION_ERROR_SCHEMA=ERROR_SPEC,
        VALIDATION_ERROR_STATUS_CODE=400,
        JSON_SORT_KEYS=False,
        **_local_swagger_ui(),
    )
    configure_logging(app.config["LOG_LEVEL"])

    app.config["DATA_DIR"] = Path(app.config["DATA_DIR"])
    app.config["ADMIN_TOKEN"] = ensure_admin_token(app.config["DATA_DIR"], app.config["ADMIN_TOKEN"])

    store = ModelStore(app.config["MODEL_DIR"])
    jobs = JobStore(app.config["DATA_DIR"])
    jobs.reap_dead()  # a job whose process died while the server was down is marked failed
    app.extensions["digit_lab"] = Services(
        store=store, model=ActiveModel(store, on_reload=_note_reload), jobs=jobs, feedback=FeedbackStore(app.config["DATA_DIR"])
    )
    for blueprint in (predict.bp, models.bp, training.bp, extras.bp, mnist.bp):
        app.register_blueprint(blueprint)
    init_request_metrics(app)
    _register_error_handling(app)
    _serve_swagger_assets(app)
    return app


def _note_reload(event: ReloadEvent) -> None:
    """Count a worker's model swap and mark the version it now serves."""
    if event.previous is not None:
        RELOADS.inc()
    record_model_served(event.version, event.previous)


def _register_error_handling(app: APIFlask) -> None:
    """Answer every error, including unexpected ones, as JSON {"error": ...} without a traceback."""

    @app.error_processor
    def _as_json(error: HTTPError) -> tuple[dict, int, dict]:
        message = error.message
        if error.status_code in HINTS and not _is_custom(error):
            message = _hint(error, HINTS[error.status_code])
        if error.detail:
            message = f"{message}: {_flatten(error.detail)}"
        return {"error": message}, error.status_code, error.headers

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, HTTPException):
            return exc
        log.exception("unhandled error on %s %s", request.method, request.path)
        return {"error": "Internal error; it has been logged. Retry, and report it if it persists."}, 500


def _is_custom(error: HTTPError) -> bool:
    """Tell whether a handler gave this error its own message (rather than the HTTP default)."""
    return error.message not in ("", HTTP_STATUS_CODES.get(error.status_code))


def _hint(error: HTTPError, template: str) -> str:
    """Fill a default error message with the request's details."""
    allowed = ", ".join(sorted(error.headers.get("Allow", "").split(", "))) if error.headers else ""
    return template.format(
        method=request.method, path=request.path, allowed=allowed or "another method",
        limit=current_app.config["MAX_UPLOAD_MB"],
    )


def _flatten(detail: dict) -> str:
    """Render a validation error's detail as one readable line."""
    parts = []
    for location, fields in detail.items():
        for field, problems in (fields.items() if isinstance(fields, dict) else [(location, fields)]):
            parts.append(f"{location}.{field}: {' '.join(map(str, problems)) if isinstance(problems, list) else problems}")
    return "; ".join(parts)


def _local_swagger_ui() -> dict[str, str]:
    """Serve Swagger UI's files from the installed swagger-ui-bundle, so /docs works offline."""
    return {
        "SWAGGER_UI_CSS": "/docs/assets/swagger-ui.css",
        "SWAGGER_UI_BUNDLE_JS": "/docs/assets/swagger-ui-bundle.js",
        "SWAGGER_UI_STANDALONE_PRESET_JS": "/docs/assets/swagger-ui-standalone-preset.js",
    }


def _serve_swagger_assets(app: APIFlask) -> None:
    """Add the static route behind _local_swagger_ui."""
    from swagger_ui_bundle import swagger_ui_path

    @app.get("/docs/assets/<path:filename>")
    @app.doc(hide=True)
    def swagger_asset(filename: str) -> Response:
        """Serve one Swagger UI file."""
        return send_from_directory(swagger_ui_path, filename)
