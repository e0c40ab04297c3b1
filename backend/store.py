"""The versioned model store: one folder per version and an atomically swapped ACTIVE pointer.

    models/
      ACTIVE                     # the active version id, replaced with os.replace
      20261121-104500-3fa2/      # one complete, immutable version
        model.keras              # the Keras model, for evaluation and fine-tuning
        model.tflite             # the LiteRT export the web workers serve
        metadata.json            # provenance, hyperparameters, history, test metrics

A version is written into a hidden `.incoming-*` folder and renamed into place only when it is
complete, so a reader never sees half a version. Paths inside the store are relative.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from backend.fileio import atomic_write_bytes, atomic_write_json, fsync_dir

KERAS_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
METADATA_FILE = "metadata.json"
ACTIVE_FILE = "ACTIVE"
INCOMING_PREFIX = ".incoming-"
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
REQUIRED_FILES = (KERAS_FILE, TFLITE_FILE, METADATA_FILE)


class VersionNotFoundError(LookupError):
    """The named model version is not a complete version in the store."""


class ModelStore:
    """Read, publish and activate model versions under one root folder."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @staticmethod
    def new_version_id() -> str:
        """Return a fresh, sortable version id: UTC time plus a random suffix."""
        return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"

    def path(self, version: str) -> Path:
        """Return the folder of a version, refusing ids that could escape the store."""
        if not isinstance(version, str) or not VERSION_PATTERN.match(version):
            raise VersionNotFoundError(f"{version!r} is not a valid model version id.")
        return self.root / version

    def is_complete(self, version: str) -> bool:
        """Tell whether a version folder holds every file a published version has."""
        try:
            folder = self.path(version)
        except VersionNotFoundError:
            return False
        return all((folder / name).is_file() for name in REQUIRED_FILES)

    def versions(self) -> list[str]:
        """List complete versions, oldest first; unfinished `.incoming-*` folders never appear."""
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and self.is_complete(entry.name)
        )

    def metadata(self, version: str) -> dict[str, Any]:
        """Return a version's metadata.json."""
        if not self.is_complete(version):
            raise VersionNotFoundError(f"Model version {version!r} does not exist.")
        return json.loads((self.path(version) / METADATA_FILE).read_text())

    def tflite_path(self, version: str) -> Path:
        """Return the LiteRT file of a version."""
        return self.path(version) / TFLITE_FILE

    def keras_path(self, version: str) -> Path:
        """Return the Keras file of a version."""
        return self.path(version) / KERAS_FILE

    def active_version(self) -> str | None:
        """Return the active version id, or None when nothing is active yet."""
        try:
            version = (self.root / ACTIVE_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        return version or None

    def active_stamp(self) -> tuple[int, int] | None:
        """Return a cheap fingerprint of the ACTIVE pointer that changes on every activation."""
        try:
            stat = os.stat(self.root / ACTIVE_FILE)
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def publish(self, version: str, write_files: Callable[[Path], dict | None], metadata: dict[str, Any]) -> str:
        """Write a version into a hidden folder via `write_files`, then rename it into place.

        `write_files(folder)` writes the model files and may return more metadata (e.g. test metrics).
        """
        final = self.path(version)
        if final.exists():
            raise FileExistsError(f"Model version {version} already exists; versions are never overwritten.")
        self.root.mkdir(parents=True, exist_ok=True)
        incoming = self.root / f"{INCOMING_PREFIX}{version}-{os.getpid()}"
        incoming.mkdir()
        try:
            written = write_files(incoming) or {}
            atomic_write_json(incoming / METADATA_FILE, {"version": version, **metadata, **written})
            missing = [name for name in REQUIRED_FILES if not (incoming / name).is_file()]
            if missing:
                raise RuntimeError(f"version {version} is missing {missing}")
            os.rename(incoming, final)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        return version

    def activate(self, version: str) -> None:
        """Point ACTIVE at a complete version with one atomic os.replace."""
        if not self.is_complete(version):
            raise VersionNotFoundError(f"Model version {version!r} does not exist or is incomplete.")
        atomic_write_bytes(self.root / ACTIVE_FILE, f"{version}\n".encode())

    def summaries(self) -> list[dict[str, Any]]:
        """Return one short row per version, newest first, for listings."""
        rows = []
        for version in reversed(self.versions()):
            meta = self.metadata(version)
            test = meta.get("test_metrics", {})
            rows.append(
                {
                    "version": version,
                    "created": meta.get("created"),
                    "parent": meta.get("parent"),
                    "accuracy": test.get("accuracy"),
                    "macro_f1": test.get("macro_f1"),
                    "training_seconds": meta.get("training_seconds"),
                    "data": meta.get("data", {}).get("sources"),
                }
            )
        return rows
