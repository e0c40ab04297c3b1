"""User feedback: images whose prediction was wrong, stored as sent with the right label.

Records live in SQLite under DATA_DIR and images under DATA_DIR/feedback/; nothing is ever
overwritten. The export is a ZIP in the same 0/…9/ layout that /upload_and_retrain takes, and
retraining with include_feedback trains on them through the same stem.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import uuid
import zipfile
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from backend.data import UploadedDataset
from backend.fileio import atomic_write_bytes
from backend.jobs import now
from backend.preprocessing import decode_image, preprocess_bytes

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    label INTEGER NOT NULL,
    predicted INTEGER,
    model_version TEXT,
    filename TEXT,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL
)
"""
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif"}


class FeedbackStore:
    """Feedback records and their images."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.image_dir = self.data_dir / "feedback"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "feedback.sqlite3"
        with closing(self._connect()) as db:
            db.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        """Open an autocommit connection."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def add(self, data: bytes, label: int, predicted: int | None = None, model_version: str | None = None,
            filename: str | None = None, max_pixels: int = 40_000_000) -> dict[str, Any]:
        """Store an image and its right label; the image must pass the stem (else InvalidImageError)."""
        preprocess_bytes(data, max_pixels=max_pixels)
        extension = EXTENSIONS.get(decode_image(data, max_pixels).format or "", ".img")
        record = {"id": uuid.uuid4().hex[:12], "created": now(), "label": int(label), "predicted": predicted,
                  "model_version": model_version, "filename": filename, "sha256": hashlib.sha256(data).hexdigest()}
        record["path"] = f"{record['id']}{extension}"
        atomic_write_bytes(self.image_dir / record["path"], data)
        with closing(self._connect()) as db:
            db.execute(
                "INSERT INTO feedback (id, created, label, predicted, model_version, filename, path, sha256) "
                "VALUES (:id, :created, :label, :predicted, :model_version, :filename, :path, :sha256)", record,
            )
        return record

    def list(self) -> list[dict[str, Any]]:
        """Return every record, oldest first."""
        with closing(self._connect()) as db:
            return [dict(row) for row in db.execute("SELECT * FROM feedback ORDER BY created, rowid")]

    def export_zip(self) -> bytes:
        """Return a ZIP of folders 0-9 holding every feedback image as sent, plus a manifest."""
        records = self.list()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for record in records:
                archive.write(self.image_dir / record["path"], f"{record['label']}/{record['path']}")
            archive.writestr("feedback.json", json.dumps(records, indent=2))
        return buffer.getvalue()

    def as_dataset(self) -> UploadedDataset | None:
        """Return all feedback as a training dataset through the shared stem, or None if there is none."""
        records = self.list()
        if not records:
            return None
        x = np.stack([preprocess_bytes((self.image_dir / r["path"]).read_bytes()) for r in records])[..., np.newaxis]
        y = np.array([r["label"] for r in records], np.int64)
        return UploadedDataset("feedback", x, y, holdout=np.zeros(len(records), bool))
