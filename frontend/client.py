"""The dashboard's only way to the backend: a small HTTP client over `requests`.

It never imports `backend`. Every failure becomes a `BackendError` carrying a message a person can
read: the API's own JSON `{"error": ...}` text for 4xx/5xx answers, or a plain sentence when the
backend cannot be reached at all. What the dashboard must agree on with the backend (job and review
states, epoch limits and defaults) it reads from the backend's OpenAPI document (`ApiFacts`).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

DEFAULT_BACKEND_URL = "http://127.0.0.1:5000"
REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN_FILE_NAME = "admin_token"  # the file the backend writes under its DATA_DIR
TOKEN_HELP = (
    "Admin actions need the backend's admin token. Set ADMIN_TOKEN (or ADMIN_TOKEN_FILE, a file holding it) "
    "in the dashboard's environment, or start the backend once with the same DATA_DIR so it writes "
    f"DATA_DIR/{TOKEN_FILE_NAME}."
)
# Reads answer in milliseconds; uploads and training submissions get longer.
READ_TIMEOUT = 10.0
UPLOAD_TIMEOUT = 120.0
HEALTH_TIMEOUT = 3.0


class BackendError(Exception):
    """A request failed; `message` is readable, `status` is the HTTP status (None if unreachable)."""

    def __init__(self, message: str, status: int | None = None, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body or {}

    @property
    def unreachable(self) -> bool:
        """Tell whether the backend could not be reached at all."""
        return self.status is None

    @property
    def not_found(self) -> bool:
        """Tell whether the backend answered 404 (the object asked for does not exist)."""
        return self.status == 404


def backend_url() -> str:
    """Return the backend base URL from BACKEND_URL, without a trailing slash."""
    return (os.environ.get("BACKEND_URL") or DEFAULT_BACKEND_URL).strip().rstrip("/")


def local_admin_token() -> str | None:
    """Find the token on this machine: ADMIN_TOKEN, else the file ADMIN_TOKEN_FILE, else DATA_DIR/admin_token.

    Only a dashboard bound to loopback may use it: anyone who can reach the dashboard acts with it.
    """
    token = os.environ.get("ADMIN_TOKEN", "").strip()
    if token:
        return token
    named = os.environ.get("ADMIN_TOKEN_FILE", "").strip()
    data_dir = os.environ.get("DATA_DIR", "").strip()
    path = Path(named).expanduser() if named else Path(data_dir or REPO_ROOT / "data").expanduser() / TOKEN_FILE_NAME
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class ApiFacts:
    """Facts the backend defines once and publishes in /openapi.json (its schemas' enums, limits and x- fields)."""

    job_statuses: tuple[str, ...]
    unfinished_jobs: tuple[str, ...]  # the states in which a job still changes
    start_points: tuple[str, ...]  # where a retrain may start from
    default_start: str
    default_epochs: dict[str, int]  # per start point, when a retrain does not say
    upload_epochs: int  # when an upload does not say
    max_epochs: int
    review_statuses: tuple[str, ...]  # feedback review states
    unreviewed: str  # the state new feedback starts in
    local_jobs: str  # GET /fleet's `jobs` when each job is a process on the API host (no Redis queue)

    @classmethod
    def from_openapi(cls, spec: dict[str, Any]) -> ApiFacts:
        """Read the facts from an OpenAPI document; a missing one is a BackendError naming it."""
        schemas = spec.get("components", {}).get("schemas", {})

        def prop(schema: str, name: str) -> dict[str, Any]:
            """One property of one component schema."""
            try:
                return schemas[schema]["properties"][name]
            except (KeyError, TypeError):
                raise BackendError(f"The backend's /openapi.json does not describe {schema}.{name}.") from None

        status, start, epochs = prop("Job", "status"), prop("RetrainRequest", "from"), prop("RetrainRequest", "epochs")
        upload, review = prop("ZipUpload", "epochs"), prop("FeedbackRecord", "status")
        job_mode = prop("Fleet", "jobs")
        try:
            return cls(
                job_statuses=tuple(status["enum"]),
                unfinished_jobs=tuple(status["x-unfinished"]),
                start_points=tuple(start["enum"]),
                default_start=start["default"],
                default_epochs={key: int(value) for key, value in epochs["x-default-by-from"].items()},
                upload_epochs=int(upload["default"]),
                max_epochs=int(epochs["maximum"]),
                review_statuses=tuple(review["enum"]),
                unreviewed=review["x-initial"],
                local_jobs=job_mode["x-local"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"The backend's /openapi.json lacks a field the dashboard reads: {exc}.") from None


@dataclass(frozen=True)
class Upload:
    """One file to send: its name, bytes and MIME type."""

    name: str
    data: bytes
    mime: str = "application/octet-stream"

    def field(self) -> tuple[str, bytes, str]:
        """Return the (filename, bytes, type) tuple requests wants for a multipart field."""
        return (self.name, self.data, self.mime)


class BackendClient:
    """Typed calls to the Digit Lab API over one keep-alive `requests.Session`."""

    def __init__(self, base_url: str, session: requests.Session | None = None, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.token = token  # sent only on admin calls

    # -- plumbing -----------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, admin: bool = False, timeout: float = READ_TIMEOUT, **kwargs: Any
    ) -> requests.Response:
        """Send one request and return the response, raising BackendError on any failure."""
        headers = kwargs.pop("headers", {})
        if admin:
            if not self.token:
                raise BackendError(TOKEN_HELP, status=401)
            headers["Authorization"] = f"Bearer {self.token}"
        url = f"{self.base_url}{path}"
        try:
            response = self.session.request(method, url, headers=headers, timeout=timeout, **kwargs)
        except requests.Timeout:
            raise BackendError(
                f"The backend at {self.base_url} did not answer {method} {path} within {timeout:.0f} s."
            ) from None
        except requests.RequestException as exc:
            raise BackendError(
                f"Cannot reach the backend at {self.base_url} ({type(exc).__name__}). "
                "Is it running? Start it with `make backend`."
            ) from None
        if response.status_code >= 400:
            raise _error_from(response, method, path)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Send one request and return its JSON object body."""
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise BackendError(
                f"{method} {path} answered {response.status_code} without JSON.", response.status_code
            ) from None

    # -- read-only ----------------------------------------------------------------------------

    def facts(self) -> ApiFacts:
        """GET /openapi.json: the states, limits and defaults the backend publishes."""
        return ApiFacts.from_openapi(self._json("GET", "/openapi.json"))

    def health(self) -> dict[str, Any]:
        """GET /health; a 503 "no-model" answer is returned, not raised."""
        try:
            return self._json("GET", "/health", timeout=HEALTH_TIMEOUT)
        except BackendError as exc:
            if exc.status == 503 and "status" in exc.body:
                return exc.body
            raise

    def models(self) -> dict[str, Any]:
        """GET /models: every version with headline metrics, and which is active."""
        return self._json("GET", "/models")

    def model(self, version: str) -> dict[str, Any]:
        """GET /models/<version>: one version's metadata."""
        return self._json("GET", f"/models/{requests.utils.quote(version, safe='')}")

    def fleet(self) -> dict[str, Any]:
        """GET /fleet: the live replica workers with the version each serves, the trainers, and whether they agree."""
        return self._json("GET", "/fleet")

    def mnist_summary(self) -> dict[str, Any]:
        """GET /mnist/summary: class counts and the average digit per class."""
        return self._json("GET", "/mnist/summary")

    def mnist_test_png(self, index: int) -> bytes:
        """GET /mnist/test/<index>.png: one MNIST test digit as PNG bytes."""
        return self._request("GET", f"/mnist/test/{int(index)}.png").content

    def datasets(self) -> list[dict[str, Any]]:
        """GET /datasets: uploaded datasets with per-class counts and skipped files."""
        return self._json("GET", "/datasets").get("datasets", [])

    def jobs(self) -> list[dict[str, Any]]:
        """GET /jobs: training jobs, as the backend orders them."""
        return self._json("GET", "/jobs").get("jobs", [])

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /jobs/<id>: one job's status, progress, history, log and result."""
        return self._json("GET", f"/jobs/{requests.utils.quote(job_id, safe='')}")

    # -- predictions --------------------------------------------------------------------------

    def predict(self, image: Upload, include_input: bool = True) -> dict[str, Any]:
        """POST /predict with one image; `include_input` asks for the 28x28 the model saw."""
        params = {"include": "input"} if include_input else None
        return self._json("POST", "/predict", params=params, files={"file": image.field()}, timeout=UPLOAD_TIMEOUT)

    def explain(self, image: Upload) -> dict[str, Any]:
        """POST /explain: the prediction with a saliency heatmap and overlay PNG (base64)."""
        return self._json("POST", "/explain", files={"file": image.field()}, timeout=UPLOAD_TIMEOUT)

    def feedback(
        self, image: Upload, label: int, predicted: int | None = None, model_version: str | None = None
    ) -> dict[str, Any]:
        """POST /feedback: store the image with its right label for later retraining."""
        form = {"label": str(int(label))}
        if predicted is not None:
            form["predicted"] = str(int(predicted))
        if model_version:
            form["model_version"] = model_version
        return self._json("POST", "/feedback", data=form, files={"file": image.field()}, timeout=UPLOAD_TIMEOUT)

    # -- admin --------------------------------------------------------------------------------

    def activate(self, version: str) -> dict[str, Any]:
        """POST /models/<version>/activate (admin): switch the served version."""
        return self._json("POST", f"/models/{requests.utils.quote(version, safe='')}/activate", admin=True)

    def retrain(
        self, epochs: int | None, start_from: str, include_uploads: bool = False, include_feedback: bool = False
    ) -> dict[str, Any]:
        """POST /retrain (admin): queue a job on MNIST (plus uploads/feedback if asked); epochs None: the default."""
        payload: dict[str, Any] = {
            "from": start_from,
            "include_uploads": include_uploads,
            "include_feedback": include_feedback,
        }
        if epochs is not None:
            payload["epochs"] = int(epochs)
        return self._json("POST", "/retrain", admin=True, json=payload)

    def upload_and_retrain(self, archive: Upload, epochs: int | None = None) -> dict[str, Any]:
        """POST /upload_and_retrain (admin): send a ZIP of folders 0-9 and queue a training job on it."""
        form = {"epochs": str(int(epochs))} if epochs else None
        return self._json(
            "POST",
            "/upload_and_retrain",
            admin=True,
            data=form,
            files={"file": archive.field()},
            timeout=UPLOAD_TIMEOUT,
        )

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """POST /jobs/<id>/cancel (admin): stop a queued or running job."""
        return self._json("POST", f"/jobs/{requests.utils.quote(job_id, safe='')}/cancel", admin=True)

    def feedback_records(self, status: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """GET /feedback (admin): the oldest records (optionally of one review status), counts, storage used."""
        params = {key: value for key, value in (("status", status), ("limit", limit)) if value is not None}
        return self._json("GET", "/feedback", admin=True, params=params)

    def feedback_png(self, feedback_id: str) -> bytes:
        """GET /feedback/<id>.png (admin): the stored 28x28 model input of one feedback record."""
        return self._request("GET", f"/feedback/{requests.utils.quote(feedback_id, safe='')}.png", admin=True).content

    def review_feedback(self, feedback_id: str, status: str) -> dict[str, Any]:
        """POST /feedback/<id>/review (admin): accept or reject one feedback record for training."""
        return self._json(
            "POST",
            f"/feedback/{requests.utils.quote(feedback_id, safe='')}/review",
            admin=True,
            json={"status": status},
        )


def _error_from(response: requests.Response, method: str, path: str) -> BackendError:
    """Turn a 4xx/5xx response into a BackendError using the API's {"error": ...} text."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = body.get("error")
    if not message:
        message = f"{method} {path} failed with HTTP {response.status_code} {response.reason or ''}".strip()
    if response.status_code == 401 and "Authorization" in response.request.headers:
        message = f"{message} The dashboard's admin token was refused."
    return BackendError(message, status=response.status_code, body=body)


def decode_png(encoded: str) -> bytes:
    """Decode a base64 PNG from the API, accepting a data: URL too."""
    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    return base64.b64decode(encoded)
