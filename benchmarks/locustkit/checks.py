"""Response checks: a 200 with a wrong body is a failure, recorded under the request's name."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from backend.data.jobs import FAILED, STATUSES, UNFINISHED

if TYPE_CHECKING:
    from locust.clients import ResponseContextManager as HttpResponseContext
    from locust.contrib.fasthttp import FastResponse, ResponseContextManager
    from requests import Response

PROBABILITY_TOLERANCE = 1e-3  # float32 softmax sums are off by ~1e-6; anything near 1e-3 is a real bug
METRICS_PREFIX = "digitlab_"  # every series the app itself exports starts with this
FINISHED = tuple(status for status in STATUSES if status not in UNFINISHED)  # a job in one of these is over

Problem = Callable[[Any], str | None]  # says what is wrong with a decoded body, or None


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


def health_problem(body: Any) -> str | None:
    """Check a /health body: it must say ok and name the served version."""
    if isinstance(body, dict) and body.get("status") == "ok" and body.get("model_version"):
        return None
    return f"unhealthy: {body}"


def job_problem(body: Any) -> str | None:
    """Check a /jobs/<id> body; a job that failed counts as a failed request."""
    status = body.get("status") if isinstance(body, dict) else None
    if status not in STATUSES:
        return f"unknown job status {status!r}"
    if status == FAILED:
        return f"the training job failed: {str(body.get('error'))[:200]}"
    return None


def has(key: str, kind: type) -> Problem:
    """Build a body check requiring `key` of type `kind`."""
    return lambda body: None if isinstance(body, dict) and isinstance(body.get(key), kind) else f"missing '{key}'"


def json_or_none(response: FastResponse | Response) -> Any:
    """Return the decoded JSON body, or None if it is not JSON."""
    try:
        return response.json()
    except (ValueError, TypeError):
        return None


def check_json(
    response: ResponseContextManager | HttpResponseContext, problem: Problem, expected: tuple[int, ...] = (200,)
) -> Any:
    """Mark a caught response failed on an unexpected status or a body `problem` finds; return the body."""
    if response.status_code not in expected:
        text = (response.text or "")[:200] if response.status_code else str(response.error)
        response.failure(f"HTTP {response.status_code}: {text}")
        return None
    body = json_or_none(response)
    issue = "body is not JSON" if body is None else problem(body)
    if issue:
        response.failure(issue)
        return None
    response.success()
    return body


def check_metrics(response: ResponseContextManager | HttpResponseContext) -> None:
    """Mark a caught /metrics response failed unless it is Prometheus text with the app's own series."""
    if response.status_code == 200 and METRICS_PREFIX in (response.text or ""):
        response.success()
    else:
        response.failure(f"HTTP {response.status_code}: no {METRICS_PREFIX} series in /metrics")
