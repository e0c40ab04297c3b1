"""Uploaded datasets: a ZIP of folders 0-9 checked, stemmed and stored immutably under DATA_DIR/datasets."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from backend.core.fileio import atomic_write_json, fsync_dir
from backend.core.preprocessing import InvalidImageError, preprocess_bytes
from backend.data.mnist import DatasetUnavailableError, class_counts

JUNK_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}
HOLDOUT_SHARE_PERCENT = 20  # of each upload, chosen by content hash so the split never changes
RATIO_CHECK_AFTER_BYTES = 1 << 20  # small, highly compressible images (BMP on white) are fine
DIGIT_FOLDERS = {str(d) for d in range(10)}
MANIFEST_FILE = "manifest.json"
ARRAYS_FILE = "arrays.npz"


class DatasetRejectedError(ValueError):
    """An uploaded ZIP that is refused before anything is stored or trained."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class ZipLimits:
    """Bounds that keep a hostile ZIP from exhausting memory or disk."""

    max_entries: int = 20_000
    max_total_bytes: int = 200 * 1024 * 1024
    max_ratio: float = 100.0


@dataclass
class UploadedDataset:
    """Stemmed images of one stored upload, split into train and hold-out parts."""

    dataset_id: str
    x: np.ndarray
    y: np.ndarray
    holdout: np.ndarray  # boolean mask


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Return why a ZIP entry is dangerous (refusing the whole upload), or None."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f"entry '{info.filename}' has an absolute path"
    if ".." in name.split("/"):
        return f"entry '{info.filename}' tries to escape the archive (path traversal)"
    if (info.external_attr >> 16) & 0o170000 == 0o120000:
        return f"entry '{info.filename}' is a symbolic link"
    if info.flag_bits & 0x1:
        return f"entry '{info.filename}' is encrypted"
    return None


def _junk_reason(parts: list[str]) -> str | None:
    """Return why a file is junk to skip quietly (OS metadata, hidden files), or None."""
    if parts[0] == "__MACOSX":
        return "macOS metadata (__MACOSX)"
    if any(part.startswith(".") for part in parts):
        return "hidden file"
    if parts[-1].lower() in JUNK_FILES:
        return "system file"
    return None


def _read_bounded(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: list[int], limits: ZipLimits) -> bytes:
    """Read one entry, counting real bytes (headers can lie) against the size and ratio limits."""
    chunks, size = [], 0
    with archive.open(info) as handle:
        while chunk := handle.read(1 << 16):
            size += len(chunk)
            budget[0] += len(chunk)
            if budget[0] > limits.max_total_bytes:
                raise DatasetRejectedError(
                    f"The ZIP unpacks to more than {limits.max_total_bytes // (1 << 20)} MB: "
                    "send fewer or smaller images.",
                    413,
                )
            if size > RATIO_CHECK_AFTER_BYTES and size > limits.max_ratio * max(info.compress_size, 1):
                raise DatasetRejectedError(
                    f"Entry '{info.filename}' expands more than {limits.max_ratio:.0f}x (a ZIP bomb?): refused.", 413
                )
            chunks.append(chunk)
    return b"".join(chunks)


def _digit_layout(names: list[list[str]]) -> int:
    """Return how many leading folders to strip: 0 for digit folders at the root, 1 inside one top folder."""
    if any(len(parts) >= 2 and parts[0] in DIGIT_FOLDERS for parts in names):
        return 0
    tops = {parts[0] for parts in names if len(parts) >= 2}
    if len(tops) == 1 and any(len(parts) >= 3 and parts[1] in DIGIT_FOLDERS for parts in names):
        return 1
    raise DatasetRejectedError(
        "No digit folders found: the ZIP must hold folders named 0 to 9 (at its root or inside one top folder) "
        "with the images of each digit inside."
    )


def _safe_name(name: str) -> str:
    """Keep a file name's readable characters only, for storage under a folder we control."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[-80:]
    return cleaned.lstrip(".") or "image"


def ingest_zip(data: bytes, datasets_dir: Path, limits: ZipLimits | None = None, filename: str = "upload.zip") -> dict:
    """Validate an uploaded ZIP of digit folders, then store it immutably; return its manifest.

    Every image is kept byte for byte as uploaded, next to a manifest (per-class counts, skipped
    files and why, sha256 of each file) and the stemmed arrays used for training. The dataset is
    written into a hidden folder and renamed into place, so a refused or failed upload leaves nothing.
    """
    limits = limits or ZipLimits()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
        raise DatasetRejectedError(
            f"The file is not a readable ZIP archive ({exc}): send a .zip of folders 0-9."
        ) from exc
    if len(infos) > limits.max_entries:
        raise DatasetRejectedError(f"The ZIP has {len(infos)} entries, over the limit of {limits.max_entries}.", 413)
    for info in infos:
        problem = _entry_problem(info)
        if problem:
            raise DatasetRejectedError(f"Refused: {problem}. Send a plain ZIP of folders 0-9.")

    skipped: list[dict[str, str]] = []
    candidates: list[tuple[zipfile.ZipInfo, list[str]]] = []
    for info in infos:
        parts = [p for p in info.filename.replace("\\", "/").split("/") if p]
        if info.is_dir() or not parts:
            continue
        reason = _junk_reason(parts)
        if reason:
            skipped.append({"name": info.filename, "reason": reason})
        else:
            candidates.append((info, parts))
    strip = _digit_layout([parts for _, parts in candidates])

    budget = [0]
    images: list[dict[str, Any]] = []
    contents: list[bytes] = []
    arrays: list[np.ndarray] = []
    for info, parts in candidates:
        inner = parts[strip:]
        if len(inner) < 2 or inner[0] not in DIGIT_FOLDERS:
            skipped.append({"name": info.filename, "reason": "not inside a digit folder 0-9"})
            continue
        try:
            content = _read_bounded(archive, info, budget, limits)
        except (zipfile.BadZipFile, EOFError, OSError, RuntimeError) as exc:
            raise DatasetRejectedError(f"Entry '{info.filename}' is corrupt ({exc}): send an intact ZIP.") from exc
        try:
            arrays.append(preprocess_bytes(content))
        except InvalidImageError as exc:
            skipped.append({"name": info.filename, "reason": f"not a usable image: {exc.message}"})
            continue
        digest = hashlib.sha256(content).hexdigest()
        label = int(inner[0])
        stored = f"{label}/{len(images):05d}-{_safe_name(inner[-1])}"
        images.append(
            {
                "path": stored,
                "label": label,
                "sha256": digest,
                "original": info.filename,
                "split": "holdout" if int(digest[:8], 16) % 100 < HOLDOUT_SHARE_PERCENT else "train",
            }
        )
        contents.append(content)
    if not images:
        raise DatasetRejectedError(
            "No usable images after skipping junk: put PNG/JPEG digit images in folders 0-9.", 422
        )

    dataset_id = f"ds-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    labels = np.array([item["label"] for item in images], np.int64)
    manifest = {
        "id": dataset_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "filename": filename,
        "zip_sha256": hashlib.sha256(data).hexdigest(),
        "images": len(images),
        "per_class": class_counts(labels),
        "holdout_images": sum(item["split"] == "holdout" for item in images),
        "skipped": skipped,
        "files": images,
    }
    datasets_dir.mkdir(parents=True, exist_ok=True)
    incoming = datasets_dir / f".incoming-{dataset_id}"
    try:
        for item, content in zip(images, contents):
            target = incoming / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        np.savez_compressed(
            incoming / ARRAYS_FILE,
            x=np.stack(arrays),
            y=labels,
            holdout=np.array([item["split"] == "holdout" for item in images]),
        )
        atomic_write_json(incoming / MANIFEST_FILE, manifest)
        os.rename(incoming, datasets_dir / dataset_id)
        fsync_dir(datasets_dir)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    return manifest


def dataset_summary(manifest: dict) -> dict:
    """Return the short description of a stored dataset that the API answers with."""
    return {
        key: manifest[key] for key in ("id", "images", "per_class", "skipped", "holdout_images", "created", "filename")
    }


def list_datasets(datasets_dir: Path) -> list[dict]:
    """Return the manifests of every complete stored dataset, oldest first."""
    if not datasets_dir.is_dir():
        return []
    return [
        json.loads((folder / MANIFEST_FILE).read_text())
        for folder in sorted(datasets_dir.iterdir())
        if not folder.name.startswith(".") and (folder / MANIFEST_FILE).is_file()
    ]


def load_uploaded(datasets_dir: Path, dataset_id: str) -> UploadedDataset:
    """Load a stored dataset's stemmed arrays and its train/hold-out split."""
    folder = datasets_dir / dataset_id
    if dataset_id.startswith(".") or "/" in dataset_id or not (folder / ARRAYS_FILE).is_file():
        raise DatasetUnavailableError(f"Uploaded dataset {dataset_id!r} does not exist.")
    with np.load(folder / ARRAYS_FILE) as arrays:
        return UploadedDataset(dataset_id, arrays["x"][..., np.newaxis], arrays["y"], arrays["holdout"])
