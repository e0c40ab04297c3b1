"""The versioned model store: one folder per version and an active pointer moved by compare-and-set.

    models/
      ACTIVE                     # the active version id, replaced with os.replace
      20261121-104500-3fa2/      # one complete, immutable version
        model.keras              # the Keras model, for evaluation and fine-tuning
        model.tflite             # the LiteRT export the web workers serve
        metadata.json            # provenance, hyperparameters, history, test metrics, file hashes

A version is written into a hidden `.incoming-*` folder, fsynced, and renamed into place only when
it is complete, so a reader never sees half a version, even after a power cut. Paths inside the
store are relative. metadata.json records each model file's size and sha256, so a damaged file is
caught before it is activated.

The pointer is the ACTIVE file on a single host; a fleet keeps it in the database
(backend.data.fleet.DatabasePointer), since a shared filesystem caches file attributes for seconds.

Removing versions (`ModelStore.prune`) takes the same lock as activation; the retention policy
that decides what to remove lives in backend.data.retention.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import EllipsisType
from typing import Any, Protocol

from backend.core.fileio import atomic_write_bytes, atomic_write_json, fsync_dir

KERAS_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
METADATA_FILE = "metadata.json"
ACTIVE_FILE = "ACTIVE"
INCOMING_PREFIX = ".incoming-"
REMOVING_PREFIX = ".removing-"
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MODEL_FILES = (KERAS_FILE, TFLITE_FILE)
REQUIRED_FILES = (*MODEL_FILES, METADATA_FILE)


class ActivationConflictError(RuntimeError):
    """Another activation changed the active version between reading it and replacing it."""


class VersionNotFoundError(LookupError):
    """The named model version is not a complete version in the store."""


class CorruptVersionError(ValueError):
    """A version's files are damaged or do not behave like a digit model."""


def file_record(path: Path) -> dict[str, Any]:
    """Return a file's size and sha256, as metadata.json records them."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def seal(path: Path) -> dict[str, Any]:
    """Flush a written file to disk and return its record."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    return file_record(path)


def process_running(pid: int) -> bool:
    """Tell whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, run by another user
    return True


class ActivePointer(Protocol):
    """Where the active version id is kept: the ACTIVE file on one host, a database row in a fleet."""

    def read(self) -> str | None:
        """Return the active version id, or None when nothing is active yet."""

    def stamp(self) -> Hashable:
        """Return a cheap fingerprint that changes on every activation (read on every request)."""

    def swap(self, version: str, expected: str | None | EllipsisType = ..., connection: Any = None) -> None:
        """Make `version` active if the active version is still `expected` (any, for ...), else raise
        ActivationConflictError; `connection` is a database transaction to take part in, if any."""


class FilePointer:
    """The single-host pointer: a file replaced with one atomic os.replace, read with one os.stat per request."""

    def __init__(self, root: Path) -> None:
        self.path = root / ACTIVE_FILE

    def read(self) -> str | None:
        """Return the version the file names."""
        try:
            version = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        return version or None

    def stamp(self) -> tuple[int, int] | None:
        """Return the file's inode and mtime, which change on every replace."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def swap(self, version: str, expected: str | None | EllipsisType = ..., connection: Any = None) -> None:
        """Replace the file; the caller holds the store's lock, so the check and the write cannot interleave."""
        if expected is not ... and self.read() != expected:
            raise ActivationConflictError(f"the active version changed from {expected} to {self.read()} meanwhile")
        atomic_write_bytes(self.path, f"{version}\n".encode())


class ModelStore:
    """Read, publish and activate model versions under one root folder."""

    def __init__(self, root: str | os.PathLike, pointer: ActivePointer | None = None) -> None:
        self.root = Path(root)
        self.pointer = pointer or FilePointer(self.root)

    @staticmethod
    def new_version_id() -> str:
        """Return a fresh, sortable version id: UTC time plus a random suffix."""
        return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"

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
        return self.pointer.read()

    def active_stamp(self) -> Hashable:
        """Return a cheap fingerprint of the active pointer that changes on every activation."""
        return self.pointer.stamp()

    def publish(self, version: str, write_files: Callable[[Path], dict | None], metadata: dict[str, Any]) -> str:
        """Write a version into a hidden folder via `write_files`, then rename it into place.

        `write_files(folder)` writes the model files and may return more metadata (e.g. test metrics).
        Every file and the folder reach the disk before the rename, and the rename before this returns.
        """
        final = self.path(version)
        if final.exists():
            raise FileExistsError(f"Model version {version} already exists; versions are never overwritten.")
        self.root.mkdir(parents=True, exist_ok=True)
        incoming = self.root / f"{INCOMING_PREFIX}{version}-{os.getpid()}"
        incoming.mkdir()
        try:
            written = write_files(incoming) or {}
            missing = [name for name in MODEL_FILES if not (incoming / name).is_file()]
            if missing:
                raise RuntimeError(f"version {version} is missing {missing}")
            files = {name: seal(incoming / name) for name in MODEL_FILES}
            atomic_write_json(incoming / METADATA_FILE, {"version": version, **metadata, **written, "files": files})
            fsync_dir(incoming)
            os.rename(incoming, final)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        return version

    def activate(self, version: str, expected: str | None | EllipsisType = ..., connection: Any = None) -> None:
        """Point the active pointer at a complete version, if it still names `expected` (compare-and-set)."""
        with self._exclusive():  # a prune cannot remove the version between the check and the write
            if not self.is_complete(version):
                raise VersionNotFoundError(f"Model version {version!r} does not exist or is incomplete.")
            self.pointer.swap(version, expected, connection)

    def check_files(self, version: str) -> None:
        """Raise CorruptVersionError unless each model file matches the size and sha256 metadata.json recorded.

        Versions published before hashes were recorded have nothing to compare, and pass.
        """
        try:
            recorded = self.metadata(version).get("files", {})
            damaged = [
                name
                for name in MODEL_FILES
                if name in recorded
                and file_record(self.path(version) / name) != {k: recorded[name][k] for k in ("sha256", "bytes")}
            ]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptVersionError(f"version {version} cannot be read ({type(exc).__name__}: {exc})") from exc
        if damaged:
            raise CorruptVersionError(
                f"{' and '.join(damaged)} of version {version} no longer match the size and sha256 recorded in its "
                "metadata.json: the files are damaged. Activate another version (GET /models lists them)."
            )

    def problem(self) -> str | None:
        """Return why the store cannot serve (for readiness), or None when the active version is readable."""
        try:
            os.listdir(self.root)
            version = self.active_version()
        except OSError as exc:
            return f"the model store cannot be read ({type(exc).__name__}: {exc.strerror})"
        if version is None:
            return "no model version is active: train one with `python -m backend.train`"
        if not self.is_complete(version):
            return f"ACTIVE names version {version!r}, which is missing or incomplete"
        return None

    def remove(self, version: str) -> None:
        """Delete a version that is not active; one that is already gone is ignored."""
        with self._exclusive():
            self._remove(version)

    def prune(self, keep: int, busy_jobs: set[str], unpromoted_jobs: set[str]) -> list[str]:
        """Remove rejected candidates and all but the `keep` newest versions; return the removed ids.

        Never removed: the active version, its parent, and versions trained by a job in `busy_jobs`.
        A rejected candidate is a version whose metadata names a job in `unpromoted_jobs`.
        """
        with self._exclusive():
            versions = self.versions()
            trained_by = {version: self.metadata(version).get("job") for version in versions}
            active = self.active_version()
            protected = {active, self.metadata(active).get("parent")} if active in versions else set()
            protected |= {version for version, job in trained_by.items() if job in busy_jobs}
            old = set(versions[: max(0, len(versions) - keep)])
            doomed = [
                version
                for version in versions
                if version not in protected and (version in old or trained_by[version] in unpromoted_jobs)
            ]
            for version in doomed:
                self._remove(version)
            for leftover in self.root.glob(f"{REMOVING_PREFIX}*"):  # from a prune that was killed
                shutil.rmtree(leftover, ignore_errors=True)
        return doomed

    def prune_incoming(self, max_age_minutes: float) -> list[str]:
        """Remove `.incoming-*` folders older than `max_age_minutes` whose writing process is gone."""
        if not self.root.is_dir():
            return []
        cutoff = time.time() - max_age_minutes * 60
        removed = []
        for folder in sorted(self.root.glob(f"{INCOMING_PREFIX}*")):
            writer = folder.name.rsplit("-", 1)[-1]
            if folder.stat().st_mtime < cutoff and not (
                writer.isascii() and writer.isdigit() and process_running(int(writer))
            ):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        return removed

    def _remove(self, version: str) -> None:
        """Hide a version with one rename (readers never see it half-deleted), then delete it; caller holds the lock."""
        if version == self.active_version():
            raise ValueError(f"Version {version} is active; activate another one before removing it.")
        hidden = self.root / f"{REMOVING_PREFIX}{version}-{secrets.token_hex(2)}"
        try:
            os.rename(self.path(version), hidden)
        except FileNotFoundError:
            return
        fsync_dir(self.root)
        shutil.rmtree(hidden)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the store's lock (flock on its folder) so activations and removals never interleave."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

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
