"""Prometheus metrics and logging, aggregated across gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import uuid
from datetime import UTC, datetime

from flask import Flask, Response, g, has_request_context, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter("digitlab_http_requests_total", "HTTP requests handled", ["endpoint", "method", "status"])
LATENCY = Histogram(
    "digitlab_http_request_duration_seconds",
    "HTTP request latency",
    ["endpoint", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
PREDICTIONS = Counter("digitlab_predictions_total", "Digits predicted, by predicted digit", ["digit"])
RELOADS = Counter("digitlab_model_reloads_total", "Times a worker swapped in a newly activated model version")
LOAD_FAILURES = Counter(
    "digitlab_model_load_failures_total", "Times a worker could not load the version ACTIVE names (it kept the old one)"
)
ACTIVE_VERSION = Gauge(
    "digitlab_model_active_info",
    "1 for the model version a worker serves",
    ["version"],
    multiprocess_mode="livemostrecent",
)


LOG_FORMATS = ("text", "json")
TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is echoed only if it is safe in a header and a log line: 1-128 visible ASCII characters.
_SANE_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
# Fields an access-log record carries (passed as `extra`), written as top-level JSON keys.
ACCESS_FIELDS = ("method", "endpoint", "status", "latency_ms")
access_log = logging.getLogger("backend.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, the request id, and access fields if present."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a single-line JSON object."""
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _StderrHandler(logging.StreamHandler):
    """Write to whatever sys.stderr is when a record is emitted (pytest swaps it per test)."""

    @property
    def stream(self):  # type: ignore[override]
        """The current sys.stderr."""
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        """Ignore StreamHandler's assignment: the stream is always the current sys.stderr."""


def configure_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr at `level`, one line per event: plain text, or one JSON object per line when `fmt` is "json"."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}.")
    root = logging.getLogger()
    root.setLevel(getattr(logging, level, logging.INFO))
    handler = next((h for h in root.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_LOG_FORMAT))


def request_id() -> str:
    """Return this request's id: the client's X-Request-ID if sane, else a new uuid4 hex; kept on flask.g."""
    current = g.get("request_id")
    if current is None:
        sent = request.headers.get(REQUEST_ID_HEADER, "")
        current = g.request_id = sent if _SANE_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
    return current


def _current_request_id() -> str | None:
    """Return the request id when logging inside a request, else None."""
    return request_id() if has_request_context() else None


def record_predictions(digits: list[int]) -> None:
    """Count served predictions per digit."""
    for digit in digits:
        PREDICTIONS.labels(digit=str(digit)).inc()


def record_model_served(version: str, previous: str | None = None) -> None:
    """Mark the version this worker now serves in the active-version gauge."""
    if previous and previous != version:
        ACTIVE_VERSION.labels(version=previous).set(0)
    ACTIVE_VERSION.labels(version=version).set(1)


def init_request_metrics(app: Flask) -> None:
    """Time every request, count it by endpoint (the route rule, not the raw path) and status, tag it with
    X-Request-ID, and write one access-log line (INFO with LOG_FORMAT=json, DEBUG with text)."""
    access_level = logging.INFO if app.config["LOG_FORMAT"] == "json" else logging.DEBUG

    def _start_timer() -> None:
        g.request_started = time.perf_counter()

    # First of all before_request hooks, so a request refused by a later one (a rate limit) is still timed.
    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)

    @app.after_request
    def _observe(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = request_id()
        started = g.pop("request_started", None)
        if started is not None:
            seconds = time.perf_counter() - started
            endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
            status = response.status_code
            labels = {"endpoint": endpoint, "method": request.method, "status": str(status)}
            REQUESTS.labels(**labels).inc()
            LATENCY.labels(**labels).observe(seconds)
            if access_log.isEnabledFor(access_level):
                access_log.log(
                    access_level,
                    "%s %s %s",
                    request.method,
                    request.path,
                    status,
                    extra={
                        "method": request.method,
                        "endpoint": endpoint,
                        "status": status,
                        "latency_ms": round(seconds * 1000, 3),
                    },
                )
        return response


def metrics_response() -> Response:
    """Render all metrics as Prometheus text, summed over workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
