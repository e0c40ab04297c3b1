"""Settings read from environment variables, with defaults that run out of the box."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MAX_IMAGE_PIXELS = 12_000_000  # a 12 MP phone photo; anything larger is refused from its header
DEFAULT_JOB_HEARTBEAT_TIMEOUT_SECONDS = 30.0  # a running job whose process has not beaten for this long has died


def _env_int(name: str, default: int) -> int:
    """Read an integer environment variable, falling back to a default."""
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def _env_float(name: str, default: float) -> float:
    """Read a float environment variable, falling back to a default."""
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def _env_path(name: str, default: Path) -> Path:
    """Read a path environment variable; relative paths are taken from the current directory."""
    raw = os.environ.get(name, "").strip()
    return Path(raw).expanduser().resolve() if raw else default


@dataclass
class Settings:
    """Everything the service can be configured with; see the README's table of variables."""

    model_dir: Path = field(default_factory=lambda: _env_path("MODEL_DIR", REPO_ROOT / "models"))
    data_dir: Path = field(default_factory=lambda: _env_path("DATA_DIR", REPO_ROOT / "data"))
    database_url: str | None = field(default_factory=lambda: os.environ.get("DATABASE_URL") or None)
    redis_url: str | None = field(default_factory=lambda: os.environ.get("REDIS_URL") or None)
    job_heartbeat_timeout: float = field(
        default_factory=lambda: _env_float("JOB_HEARTBEAT_TIMEOUT_SECONDS", DEFAULT_JOB_HEARTBEAT_TIMEOUT_SECONDS)
    )
    mnist_path: str | None = field(default_factory=lambda: os.environ.get("MNIST_PATH") or None)
    admin_token: str | None = field(default_factory=lambda: os.environ.get("ADMIN_TOKEN") or None)
    max_upload_mb: float = field(default_factory=lambda: _env_float("MAX_UPLOAD_MB", 16.0))
    max_image_pixels: int = field(default_factory=lambda: _env_int("MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS))
    max_batch_files: int = field(default_factory=lambda: _env_int("MAX_BATCH_FILES", 256))
    max_batch_pixels: int = field(default_factory=lambda: _env_int("MAX_BATCH_PIXELS", 24_000_000))
    request_deadline_seconds: float = field(default_factory=lambda: _env_float("REQUEST_DEADLINE_SECONDS", 5.0))
    heavy_image_pixels: int = field(default_factory=lambda: _env_int("HEAVY_IMAGE_PIXELS", 2_000_000))
    feedback_max_mb: float = field(default_factory=lambda: _env_float("FEEDBACK_MAX_MB", 200.0))
    feedback_rate_limit: str = field(default_factory=lambda: os.environ.get("FEEDBACK_RATE_LIMIT", "30 per minute"))
    # A fleet counts each client once across replicas, in its Redis; one host counts per worker process.
    ratelimit_storage_uri: str = field(
        default_factory=lambda: os.environ.get("RATELIMIT_STORAGE_URI") or os.environ.get("REDIS_URL") or "memory://"
    )
    trusted_proxies: int = field(default_factory=lambda: _env_int("TRUSTED_PROXIES", 0))
    log_level: str = field(default_factory=lambda: os.environ.get("LOG_LEVEL", "INFO").upper())
    log_format: str = field(default_factory=lambda: os.environ.get("LOG_FORMAT", "text").lower())
    gate_max_mnist_drop: float = field(default_factory=lambda: _env_float("GATE_MAX_MNIST_DROP", 0.003))
    zip_max_entries: int = field(default_factory=lambda: _env_int("ZIP_MAX_ENTRIES", 20_000))
    zip_max_mb: float = field(default_factory=lambda: _env_float("ZIP_MAX_UNCOMPRESSED_MB", 200.0))
    zip_max_ratio: float = field(default_factory=lambda: _env_float("ZIP_MAX_RATIO", 100.0))

    def as_flask_config(self) -> dict:
        """Return the settings as upper-case keys for `app.config`."""
        return {key.upper(): value for key, value in self.__dict__.items()}
