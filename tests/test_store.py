"""The model store: atomic publishing, an atomic ACTIVE pointer, versions kept, relative paths."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from backend.core.store import (
    ACTIVE_FILE,
    INCOMING_PREFIX,
    ModelStore,
    VersionNotFoundError,
)


def write_dummy_model(folder: Path) -> dict:
    """Stand in for a trained model: the files a version must hold."""
    (folder / "model.keras").write_bytes(b"keras")
    (folder / "model.tflite").write_bytes(b"tflite")
    return {"test_metrics": {"accuracy": 0.5}}


def publish_dummy(store: ModelStore, version: str | None = None) -> str:
    """Publish a fake version and return its id."""
    return store.publish(version or store.new_version_id(), write_dummy_model, {"created": "now", "parent": None})


def test_publish_lists_and_reads_metadata(tmp_path):
    store = ModelStore(tmp_path)
    first, second = publish_dummy(store, "v1"), publish_dummy(store, "v2")
    assert store.versions() == [first, second]
    assert store.metadata("v2")["version"] == "v2"
    assert store.metadata("v2")["test_metrics"]["accuracy"] == 0.5
    assert [row["version"] for row in store.summaries()] == ["v2", "v1"]


def test_versions_are_never_overwritten(tmp_path):
    store = ModelStore(tmp_path)
    publish_dummy(store, "v1")
    with pytest.raises(FileExistsError):
        publish_dummy(store, "v1")
    assert store.metadata("v1")["created"] == "now"


def test_failed_write_leaves_nothing(tmp_path):
    store = ModelStore(tmp_path)

    def crash(folder: Path) -> None:
        (folder / "model.keras").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.publish("v1", crash, {})
    assert store.versions() == [] and list(tmp_path.iterdir()) == []


def _publish_slowly(root: str, ready) -> None:
    """Child process: start writing a version, then hang until killed."""
    store = ModelStore(root)

    def slow(folder: Path) -> None:
        (folder / "model.keras").write_bytes(b"partial")
        (folder / "model.tflite").write_bytes(b"partial")
        ready.set()
        time.sleep(60)

    store.publish("killed", slow, {})


def test_version_killed_mid_write_is_never_listed_or_activated(tmp_path):
    store = ModelStore(tmp_path)
    publish_dummy(store, "good")
    store.activate("good")
    ready = multiprocessing.Event()
    child = multiprocessing.Process(target=_publish_slowly, args=(str(tmp_path), ready))
    child.start()
    assert ready.wait(30)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert any(p.name.startswith(INCOMING_PREFIX) for p in tmp_path.iterdir())  # the debris is there...
    assert store.versions() == ["good"]  # ...but never listed
    with pytest.raises(VersionNotFoundError):
        store.activate("killed")
    with pytest.raises(VersionNotFoundError):
        store.activate(next(p.name for p in tmp_path.iterdir() if p.name.startswith(INCOMING_PREFIX)))
    assert store.active_version() == "good"


def test_activate_unknown_or_malicious_version(tmp_path):
    store = ModelStore(tmp_path)
    for bad in ["nope", "../etc", "", "a/b", ".hidden"]:
        with pytest.raises(VersionNotFoundError):
            store.activate(bad)
    assert store.active_version() is None


@pytest.mark.slow
def test_pointer_swap_is_atomic_under_concurrent_reads(tmp_path):
    store = ModelStore(tmp_path)
    versions = {publish_dummy(store, "v1"), publish_dummy(store, "v2")}
    store.activate("v1")
    seen, stop = set(), threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.add(store.active_version())

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for i in range(300):
        store.activate("v2" if i % 2 else "v1")
    stop.set()
    for thread in threads:
        thread.join()
    assert seen <= versions and seen == versions
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == [ACTIVE_FILE]  # no temp files left


def test_active_stamp_changes_on_every_activation(tmp_path):
    store = ModelStore(tmp_path)
    publish_dummy(store, "v1")
    assert store.active_stamp() is None
    store.activate("v1")
    first = store.active_stamp()
    store.activate("v1")
    assert store.active_stamp() != first


def test_store_folder_can_be_moved(tmp_path):
    store = ModelStore(tmp_path / "a")
    publish_dummy(store, "v1")
    store.activate("v1")
    (tmp_path / "a").rename(tmp_path / "b")
    moved = ModelStore(tmp_path / "b")
    assert moved.active_version() == "v1" and moved.metadata("v1")["version"] == "v1"
    assert str(tmp_path) not in (tmp_path / "b" / "v1" / "metadata.json").read_text()


def test_publish_records_file_hashes_and_check_files_catches_damage(tmp_path):
    import hashlib

    from backend.core.store import CorruptVersionError

    store = ModelStore(tmp_path)
    publish_dummy(store, "v1")
    files = store.metadata("v1")["files"]
    assert files["model.tflite"] == {"sha256": hashlib.sha256(b"tflite").hexdigest(), "bytes": 6}
    assert set(files) == {"model.keras", "model.tflite"}
    store.check_files("v1")
    (tmp_path / "v1" / "model.tflite").write_bytes(b"tflitX")  # same size, other bytes
    with pytest.raises(CorruptVersionError, match="model.tflite of version v1"):
        store.check_files("v1")
    (tmp_path / "v1" / "metadata.json").write_text("{not json")
    with pytest.raises(CorruptVersionError, match="cannot be read"):
        store.check_files("v1")


def test_publish_flushes_every_file_and_folder_before_the_rename(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    real_rename = os.rename
    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "rename", lambda src, dst: (synced.append("rename"), real_rename(src, dst)))
    publish_dummy(ModelStore(tmp_path), "v1")
    renamed = synced.index("rename")
    before, after = [Path(p) for p in synced[:renamed]], synced[renamed + 1 :]
    incoming = next(p for p in before if p.name.startswith(INCOMING_PREFIX))
    assert {incoming / "model.keras", incoming / "model.tflite", incoming} <= set(before)
    assert any(p.parent == incoming and "metadata.json" in p.name for p in before)  # its temp file, then os.replace
    assert after == [str(tmp_path)]  # the store folder, so the rename itself is durable
