"""The Flask application factory."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from apiflask import APIFlask
from apiflask.exceptions import HTTPError
from flask import Response, current_app, request, send_from_directory
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.middleware.proxy_fix import ProxyFix

from backend.core import budget
from backend.core.config import Settings
from backend.core.inference import ActiveModel, ReloadEvent
from backend.data.feedback import FeedbackStore
from backend.data.fleet import Replicas, follow, model_store
from backend.data.jobs import JobStore
from backend.web.api import extras, feedback, fleet, mnist, models, predict, training
from backend.web.api.auth import ensure_admin_token
from backend.web.api.schemas import ERROR_SPEC
from backend.web.api.services import Services
from backend.web.observability import (
    LOAD_FAILURES,
    RELOADS,
    configure_logging,
    init_request_metrics,
    record_model_served,
    request_id,
)

API_VERSION = "1.0"
log = logging.getLogger(__name__)

HINTS = {
    400: "The request body cannot be parsed: send well-formed JSON (a flat object) or multipart/form-data, "
    "as /docs shows.",
    404: "No such endpoint: {method} {path}. The API is described at /docs and /openapi.json.",
    405: "{method} is not allowed on {path}: use {allowed}.",
    413: "The upload is over the {limit} MB limit (MAX_UPLOAD_MB): send a smaller file.",
}
# A 413 for a body within MAX_UPLOAD_MB comes from werkzeug's form limits (MAX_FORM_PARTS, MAX_FORM_MEMORY_SIZE).
FORM_LIMIT_HINT = (
    "The form has over {parts} parts or a text field over {field_kb} KB: send only the documented fields, "
    "with images and ZIPs as file parts."
)
DEEP_JSON = "The JSON body is nested too deeply to read: send a flat JSON object, as /docs shows."


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, except that a body nested too deep to parse is bad JSON (400), not a RecursionError."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse JSON; too deep a nesting raises ValueError, which request.get_json answers as bad JSON."""
        try:
            return super().loads(s, **kwargs)
        except RecursionError as exc:
            raise ValueError(DEEP_JSON) from exc


def create_app(config: dict[str, Any] | None = None) -> APIFlask:
    """Build the API app; `config` overrides settings read from the environment (see README)."""
    app = APIFlask(__name__, title="Digit Lab API", version=API_VERSION, docs_path="/docs", spec_path="/openapi.json")
    app.json = BoundedJSONProvider(app)
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
    configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])

    app.config["DATA_DIR"] = Path(app.config["DATA_DIR"])
    app.config["ADMIN_TOKEN"] = ensure_admin_token(app.config["DATA_DIR"], app.config["ADMIN_TOKEN"])

    settings = Settings(**{name: app.config[name.upper()] for name in Settings.__dataclass_fields__})
    settings.model_dir, settings.data_dir = Path(settings.model_dir), Path(settings.data_dir)
    store = model_store(settings)
    jobs = JobStore.from_settings(settings)
    jobs.reap_dead()  # a job whose process died while the server was down is marked failed
    app.extensions["digit_lab"] = Services(
        store=store,
        model=ActiveModel(store, on_reload=_note_reload, on_load_failure=lambda failure: LOAD_FAILURES.inc()),
        jobs=jobs,
        feedback=FeedbackStore(settings.data_dir, settings.database_url),
        replicas=Replicas(jobs.engine),
    )
    if app.config["TRUSTED_PROXIES"]:  # behind nginx: the client is the one X-Forwarded-For names
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    for blueprint in (predict.bp, models.bp, training.bp, extras.bp, feedback.bp, mnist.bp, fleet.bp):
        app.register_blueprint(blueprint)
    feedback.init_rate_limit(app)
    init_request_metrics(app)
    _register_budget(app)
    _register_error_handling(app)
    _serve_swagger_assets(app)
    return app


def follow_fleet(app: Any) -> None:
    """Start this worker's fleet thread: it reports the worker in GET /fleet and picks up activations while idle.

    gunicorn runs this for whatever app it serves; one that is not a Digit Lab API (a benchmark's) has no fleet.
    """
    state = getattr(app, "extensions", {}).get("digit_lab")
    if state is not None:
        stop = threading.Event()
        app.extensions["digit_lab_fleet"] = stop, follow(state.model, state.replicas, stop)


def leave_fleet(app: Any) -> None:
    """Stop this worker's fleet thread, which takes the worker off the list."""
    if "digit_lab_fleet" in getattr(app, "extensions", {}):
        stop, thread = app.extensions["digit_lab_fleet"]
        stop.set()
        thread.join(timeout=5)


def _register_budget(app: APIFlask) -> None:
    """Give every request REQUEST_DEADLINE_SECONDS, and answer work abandoned past it with 503 and Retry-After."""

    @app.before_request
    def _start_deadline() -> None:
        budget.start(app.config["REQUEST_DEADLINE_SECONDS"])

    @app.teardown_request
    def _end_deadline(exc: BaseException | None) -> None:
        budget.start(None)  # the thread may next run work that is no request's (a test, a CLI call)

    @app.errorhandler(budget.BudgetExceeded)
    def _over_budget(exc: budget.BudgetExceeded) -> tuple[dict, int, dict]:
        return {"error": exc.message}, exc.status, {"Retry-After": str(budget.RETRY_AFTER_SECONDS)}


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
            message = _hint(error, FORM_LIMIT_HINT if _form_limit_hit(error) else HINTS[error.status_code])
        if error.detail:
            message = f"{message}: {_flatten(error.detail)}"
        return {"error": message}, error.status_code, error.headers

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, HTTPException):
            return exc
        if isinstance(exc, RecursionError) and _raised_by_json_decoder(exc):
            return {
                "error": DEEP_JSON
            }, 400  # webargs parses @input(location="json") with the stdlib json, not app.json
        rid = request_id()
        log.exception("unhandled error on %s %s (request id %s)", request.method, request.path, rid)
        return {
            "error": f"Internal error (request id {rid}); it has been logged. Retry, and report the request id "
            "if it persists.",
            "request_id": rid,
        }, 500


def _raised_by_json_decoder(exc: BaseException) -> bool:
    """Tell whether an exception was raised inside the standard library's json package."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__", "").split(".")[0] == "json"


def _form_limit_hit(error: HTTPError) -> bool:
    """Tell whether a default 413 came from the form limits rather than MAX_UPLOAD_MB."""
    length = request.content_length
    return error.status_code == 413 and length is not None and length <= current_app.config["MAX_CONTENT_LENGTH"]


def _is_custom(error: HTTPError) -> bool:
    """Tell whether a handler gave this error its own message (rather than the HTTP default)."""
    return error.message not in ("", HTTP_STATUS_CODES.get(error.status_code))


def _hint(error: HTTPError, template: str) -> str:
    """Fill a default error message with the request's details."""
    allowed = ", ".join(sorted(error.headers.get("Allow", "").split(", "))) if error.headers else ""
    return template.format(
        method=request.method,
        path=request.path,
        allowed=allowed or "another method",
        limit=current_app.config["MAX_UPLOAD_MB"],
        parts=current_app.config["MAX_FORM_PARTS"],
        field_kb=current_app.config["MAX_FORM_MEMORY_SIZE"] // 1000,
    )


def _flatten(detail: dict) -> str:
    """Render a validation error's detail as one readable line."""
    parts = []
    for location, fields in detail.items():
        for field, problems in fields.items() if isinstance(fields, dict) else [(location, fields)]:
            parts.append(
                f"{location}.{field}: {' '.join(map(str, problems)) if isinstance(problems, list) else problems}"
            )
    return "; ".join(parts)


def _local_swagger_ui() -> dict[str, str]:
    """Serve Swagger UI 5 (it reads OpenAPI 3.1) from the installed flask-swagger-ui, so /docs works offline."""
    return {
        "SWAGGER_UI_CSS": "/docs/assets/swagger-ui.css",
        "SWAGGER_UI_BUNDLE_JS": "/docs/assets/swagger-ui-bundle.js",
        "SWAGGER_UI_STANDALONE_PRESET_JS": "/docs/assets/swagger-ui-standalone-preset.js",
        "DOCS_FAVICON": "/docs/assets/favicon-32x32.png",  # APIFlask's default is fetched from apiflask.com
    }


def _serve_swagger_assets(app: APIFlask) -> None:
    """Add the static route behind _local_swagger_ui."""
    import flask_swagger_ui  # only its dist/ folder is used, not its blueprint

    swagger_dist = Path(flask_swagger_ui.__file__).parent / "dist"

    @app.get("/docs/assets/<path:filename>")
    @app.doc(hide=True)
    def swagger_asset(filename: str) -> Response:
        """Serve one Swagger UI file."""
        return send_from_directory(swagger_dist, filename)
