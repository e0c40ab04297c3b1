"""Prometheus metrics and logging, aggregated across gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set."""

from __future__ import annotations

import logging
import os
import time

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import REGISTRY, multiprocess

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter("digitlab_http_requests_total", "HTTP requests handled", ["endpoint", "method", "status"])
LATENCY = Histogram(
    "digitlab_http_request_duration_seconds", "HTTP request latency", ["endpoint", "method", "status"], buckets=LATENCY_BUCKETS
)
PREDICTIONS = Counter("digitlab_predictions_total", "Digits predicted, by predicted digit", ["digit"])
RELOADS = Counter("digitlab_model_reloads_total", "Times a worker swapped in a newly activated model version")
ACTIVE_VERSION = Gauge(
    "digitlab_model_active_info", "1 for the model version a worker serves", ["version"], multiprocess_mode="livemostrecent"
)


def configure_logging(level: str) -> None:
    """Log to stderr at `level`, in one line per event."""
    logging.basicConfig(level=getattr(logging, level, logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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
    """Time every request and count it by endpoint (the route rule, not the raw path) and status."""

    @app.before_request
    def _start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.pop("request_started", None)
        if started is not None:
            endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
            labels = {"endpoint": endpoint, "method": request.method, "status": str(response.status_code)}
            REQUESTS.labels(**labels).inc()
            LATENCY.labels(**labels).observe(time.perf_counter() - started)
        return response


def metrics_response() -> Response:
    """Render all metrics as Prometheus text, summed over workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
