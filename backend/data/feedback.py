"""User feedback: images whose prediction was wrong, stored as the model input with the right label.

Anonymous clients send feedback, so what is stored is bounded: not the upload as sent (which may be
megabytes of padding) but its 28x28 stem output, re-encoded as a grey PNG of a few hundred bytes.
The same picture with the same label is stored once (dedupe on the hash of those pixels), and the
total stored bytes are capped (FEEDBACK_MAX_MB). Nothing is trained on until an admin accepts it:
every record has a review status, and `as_dataset` returns accepted records only.

Records live in the service's database (backend.data.db) and images under DATA_DIR/feedback/.
Records from before the review state keep their images as sent, which still go through the stem.
The export is a ZIP in the same 0/…9/ layout that /upload_and_retrain takes, written as a stream.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection, RowMapping

from backend.core.fileio import atomic_write_bytes
from backend.core.preprocessing import MNIST_SIDE, preprocess_bytes
from backend.data import db
from backend.data.datasets import UploadedDataset
from backend.data.db import feedback as table
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

QUOTA_LOCK_ID = 1_950_215_472  # PostgreSQL: concurrent adds check for duplicates and the quota one at a time


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


def _record(row: RowMapping) -> dict[str, Any]:
    """Return a row as a feedback record (without the table's internal insertion order)."""
    return {key: value for key, value in row.items() if key != "seq"}


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

    def __init__(self, data_dir: str | Path, database_url: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.image_dir = self.data_dir / "feedback"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = db.engine(db.database_url(self.data_dir, database_url))

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
        try:
            with db.write(self.engine) as connection:  # the duplicate and quota checks hold until the insert
                if connection.dialect.name == "postgresql":
                    connection.execute(select(func.pg_advisory_xact_lock(QUOTA_LOCK_ID)))
                existing = self._find(connection, record["sha256"], record["label"])
                if existing is not None:
                    return existing, False
                used = connection.execute(select(func.coalesce(func.sum(table.c.bytes), 0))).scalar()
                if max_bytes is not None and used + len(png) > max_bytes:
                    raise FeedbackQuotaError(
                        f"Feedback storage is full ({used:,} of {max_bytes:,} bytes, FEEDBACK_MAX_MB): "
                        "nothing was stored. Try again after an admin has reviewed and cleared feedback."
                    )
                atomic_write_bytes(file, png)
                connection.execute(insert(table).values(**record))
        except BaseException:
            file.unlink(missing_ok=True)
            raise
        return record, True

    @staticmethod
    def _find(connection: Connection, sha256: str, label: int) -> dict[str, Any] | None:
        """Return the stored model input with these pixels and label, if any."""
        row = (
            connection.execute(
                select(table)
                .where(table.c.sha256 == sha256, table.c.label == label, table.c.stored == STORED_MODEL_INPUT)
                .order_by(table.c.seq)
                .limit(1)
            )
            .mappings()
            .first()
        )
        return _record(row) if row else None

    def get(self, record_id: str) -> dict[str, Any] | None:
        """Return one record, or None if there is no such id."""
        with db.read(self.engine) as connection:
            row = connection.execute(select(table).where(table.c.id == record_id)).mappings().first()
        return _record(row) if row else None

    def list(self, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Return every record (or those with one review status, or the first `limit`), oldest first."""
        query = select(table).order_by(table.c.created, table.c.seq).limit(limit)
        if status is not None:
            query = query.where(table.c.status == status)
        with db.read(self.engine) as connection:
            return [_record(row) for row in connection.execute(query).mappings()]

    def counts(self) -> dict[str, int]:
        """Return how many records are in each review status."""
        with db.read(self.engine) as connection:
            found = dict(connection.execute(select(table.c.status, func.count()).group_by(table.c.status)).all())
        return {status: int(found.get(status, 0)) for status in STATUSES}

    def used_bytes(self) -> int:
        """Return the bytes of every stored feedback image: what FEEDBACK_MAX_MB caps."""
        with db.read(self.engine) as connection:
            return int(connection.execute(select(func.coalesce(func.sum(table.c.bytes), 0))).scalar())

    def review(self, record_id: str, status: str) -> dict[str, Any] | None:
        """Set a record's review status; return the updated record, or None if there is no such id."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        with db.write(self.engine) as connection:
            connection.execute(update(table).where(table.c.id == record_id).values(status=status))
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
