"""User feedback: images whose prediction was wrong, stored as the model input with the right label.

Anonymous clients send feedback, so what is stored is bounded: not the upload as sent (which may be
megabytes of padding) but its 28x28 stem output, re-encoded as a grey PNG of a few hundred bytes.
The same picture with the same label is stored once (dedupe on the hash of those pixels), and the
total stored bytes are capped (FEEDBACK_MAX_MB). Nothing is trained on until an admin accepts it:
every record has a review status, and `as_dataset` returns accepted records only.

Records live in SQLite under DATA_DIR and images under DATA_DIR/feedback/. Databases made before
the review state are migrated in place; their images, stored as sent, still go through the stem.
The export is a ZIP in the same 0/…9/ layout that /upload_and_retrain takes, written as a stream.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from backend.core.fileio import atomic_write_bytes
from backend.core.preprocessing import MNIST_SIDE, preprocess_bytes
from backend.core.sqlite import connect
from backend.data.datasets import UploadedDataset
from backend.data.jobs import now

PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"
STATUSES = (PENDING, ACCEPTED, REJECTED)
# How a record's file holds its image: the 28x28 model input as a grey PNG, or (before the
# review state existed) the upload byte for byte.
STORED_MODEL_INPUT, STORED_AS_SENT = "model-input", "as-sent"
MAX_TEXT_CHARS = 64  # model_version as sent by a client
MAX_FILENAME_CHARS = 128  # an upload's file name, kept only as a note
EXPORT_CHUNK = 64 * 1024
MANIFEST = "feedback.json"

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
# Columns added after the first release: new and old databases get them the same way, in place.
ADDED_COLUMNS = {
    "status": f"TEXT NOT NULL DEFAULT '{PENDING}'",
    "bytes": "INTEGER NOT NULL DEFAULT 0",
    "stored": f"TEXT NOT NULL DEFAULT '{STORED_AS_SENT}'",
}
CONTENT_INDEX = "CREATE INDEX IF NOT EXISTS feedback_content ON feedback (sha256, label)"


class FeedbackQuotaError(Exception):
    """The feedback store holds FEEDBACK_MAX_MB already; nothing more is stored."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _levels(model_input: np.ndarray) -> np.ndarray:
    """Quantise a 28x28 model input (0-1 floats) to the 8-bit grey levels that are stored."""
    return np.clip(np.rint(np.asarray(model_input, np.float32) * 255.0), 0, 255).astype(np.uint8)


def encode_model_input(model_input: np.ndarray) -> bytes:
    """Encode a 28x28 model input (0-1 floats) as a grey 8-bit PNG."""
    buffer = io.BytesIO()
    Image.fromarray(_levels(model_input), mode="L").save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def decode_model_input(data: bytes) -> np.ndarray:
    """Decode a PNG written by encode_model_input back to the 28x28 float32 model input."""
    with Image.open(io.BytesIO(data), formats=("PNG",)) as image:
        levels = np.asarray(image.convert("L"), np.float32)
    if levels.shape != (MNIST_SIDE, MNIST_SIDE):
        raise ValueError(f"a stored model input is {levels.shape}, not {MNIST_SIDE}x{MNIST_SIDE}")
    return levels / 255.0


def content_hash(model_input: np.ndarray) -> str:
    """Hash the stored grey levels of a model input (not PNG bytes, which depend on the encoder)."""
    return hashlib.sha256(_levels(model_input).tobytes()).hexdigest()


def _note(text: str | None) -> str | None:
    """Keep a client's file name as a short printable note (it is shown, never used as a path)."""
    kept = "".join(ch for ch in text or "" if ch.isprintable())[:MAX_FILENAME_CHARS]
    return kept or None


class _Chunks(io.RawIOBase):
    """A write-only sink that zipfile writes into and the export generator drains."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        """Tell io that this sink takes writes."""
        return True

    def write(self, data: Any) -> int:
        """Keep a copy of the bytes until the next drain."""
        self.parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        """Return and forget everything written since the last drain."""
        data, self.parts = b"".join(self.parts), []
        return data


class FeedbackStore:
    """Feedback records, their images and their review state."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.image_dir = self.data_dir / "feedback"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "feedback.sqlite3"
        self._migrate()

    def _migrate(self) -> None:
        """Create the table, or bring an older one up to date; safe when several workers start at once."""
        with closing(connect(self.path)) as db:
            db.execute("BEGIN IMMEDIATE")  # one worker migrates, the others then find nothing to do
            try:
                db.execute(SCHEMA)
                present = {row["name"] for row in db.execute("PRAGMA table_info(feedback)")}
                missing = [name for name in ADDED_COLUMNS if name not in present]
                for name in missing:
                    db.execute(f"ALTER TABLE feedback ADD COLUMN {name} {ADDED_COLUMNS[name]}")
                if "bytes" in missing:  # older records count towards the quota with their real size
                    for row in db.execute("SELECT id, path FROM feedback").fetchall():
                        file = self.image_dir / row["path"]
                        size = file.stat().st_size if file.exists() else 0
                        db.execute("UPDATE feedback SET bytes = ? WHERE id = ?", (size, row["id"]))
                db.execute(CONTENT_INDEX)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def add(
        self,
        model_input: np.ndarray,
        label: int,
        predicted: int | None = None,
        model_version: str | None = None,
        filename: str | None = None,
        max_bytes: int | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Store a stemmed image with its right label; return (record, created).

        The same pixels with the same label return the existing record and `created` False.
        Raises FeedbackQuotaError when storing it would take the store over `max_bytes`.
        """
        png = encode_model_input(model_input)
        record = {
            "id": uuid.uuid4().hex[:12],
            "created": now(),
            "label": int(label),
            "predicted": predicted,
            "model_version": model_version,
            "filename": _note(filename),
            "sha256": content_hash(model_input),
            "status": PENDING,
            "bytes": len(png),
            "stored": STORED_MODEL_INPUT,
        }
        record["path"] = f"{record['id']}.png"
        file = self.image_dir / record["path"]
        with closing(connect(self.path)) as db:
            db.execute("BEGIN IMMEDIATE")  # the duplicate and quota checks hold until the insert
            try:
                existing = self._find(db, record["sha256"], record["label"])
                if existing is not None:
                    db.execute("ROLLBACK")
                    return existing, False
                used = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM feedback").fetchone()[0]
                if max_bytes is not None and used + len(png) > max_bytes:
                    raise FeedbackQuotaError(
                        f"Feedback storage is full ({used:,} of {max_bytes:,} bytes, FEEDBACK_MAX_MB): "
                        "nothing was stored. Try again after an admin has reviewed and cleared feedback."
                    )
                atomic_write_bytes(file, png)
                db.execute(
                    "INSERT INTO feedback (id, created, label, predicted, model_version, filename, path, sha256, "
                    "status, bytes, stored) VALUES (:id, :created, :label, :predicted, :model_version, :filename, "
                    ":path, :sha256, :status, :bytes, :stored)",
                    record,
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                file.unlink(missing_ok=True)
                raise
        return record, True

    @staticmethod
    def _find(db: sqlite3.Connection, sha256: str, label: int) -> dict[str, Any] | None:
        """Return the stored model input with these pixels and label, if any."""
        row = db.execute(
            "SELECT * FROM feedback WHERE sha256 = ? AND label = ? AND stored = ? ORDER BY rowid LIMIT 1",
            (sha256, label, STORED_MODEL_INPUT),
        ).fetchone()
        return dict(row) if row else None

    def get(self, record_id: str) -> dict[str, Any] | None:
        """Return one record, or None if there is no such id."""
        with closing(connect(self.path)) as db:
            row = db.execute("SELECT * FROM feedback WHERE id = ?", (record_id,)).fetchone()
        return dict(row) if row else None

    def list(self, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Return every record (or those with one review status, or the first `limit`), oldest first."""
        query, args = "SELECT * FROM feedback", []
        if status is not None:
            query, args = query + " WHERE status = ?", [status]
        query += " ORDER BY created, rowid"
        if limit is not None:
            query, args = query + " LIMIT ?", [*args, limit]
        with closing(connect(self.path)) as db:
            return [dict(row) for row in db.execute(query, args)]

    def counts(self) -> dict[str, int]:
        """Return how many records are in each review status."""
        with closing(connect(self.path)) as db:
            found = dict(db.execute("SELECT status, COUNT(*) FROM feedback GROUP BY status").fetchall())
        return {status: int(found.get(status, 0)) for status in STATUSES}

    def used_bytes(self) -> int:
        """Return the bytes of every stored feedback image: what FEEDBACK_MAX_MB caps."""
        with closing(connect(self.path)) as db:
            return int(db.execute("SELECT COALESCE(SUM(bytes), 0) FROM feedback").fetchone()[0])

    def review(self, record_id: str, status: str) -> dict[str, Any] | None:
        """Set a record's review status; return the updated record, or None if there is no such id."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        with closing(connect(self.path)) as db:
            db.execute("UPDATE feedback SET status = ? WHERE id = ?", (status, record_id))
        return self.get(record_id)

    def model_input(self, record: dict[str, Any]) -> np.ndarray:
        """Return a record's 28x28 model input (FileNotFoundError if its file is gone)."""
        data = (self.image_dir / record["path"]).read_bytes()
        if record["stored"] == STORED_MODEL_INPUT:
            return decode_model_input(data)  # already stemmed: running the stem again would move it
        return preprocess_bytes(data)

    def model_input_png(self, record: dict[str, Any]) -> bytes:
        """Return a record's model input as a grey PNG (the stored file itself for new records)."""
        if record["stored"] == STORED_MODEL_INPUT:
            return (self.image_dir / record["path"]).read_bytes()
        return encode_model_input(self.model_input(record))

    def export_zip(self, records: list[dict[str, Any]]) -> Iterator[bytes]:
        """Yield a ZIP of folders 0-9 holding the records' images, plus a manifest, one entry at a time.

        A record whose file is gone is left out and marked `"missing": true` in the manifest.
        """
        sink = _Chunks()
        manifest = []
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
            for record in records:
                try:
                    data = (self.image_dir / record["path"]).read_bytes()
                except OSError:
                    manifest.append({**record, "missing": True})
                    continue
                archive.writestr(f"{record['label']}/{record['path']}", data)
                manifest.append({**record, "missing": False})
                if sum(map(len, sink.parts)) >= EXPORT_CHUNK:
                    yield sink.drain()
            archive.writestr(MANIFEST, json.dumps(manifest, indent=2))
        yield sink.drain()

    def as_dataset(self) -> UploadedDataset | None:
        """Return accepted feedback as a training dataset of model inputs, or None if there is none.

        A record whose image is gone or unreadable is left out rather than failing the whole job.
        """
        inputs, labels = [], []
        for record in self.list(ACCEPTED):
            try:
                inputs.append(self.model_input(record))
            except (OSError, ValueError):
                continue
            labels.append(record["label"])
        if not inputs:
            return None
        x = np.stack(inputs).astype(np.float32)[..., np.newaxis]
        y = np.array(labels, np.int64)
        return UploadedDataset("feedback", x, y, holdout=np.zeros(len(labels), bool))
