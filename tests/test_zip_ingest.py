"""ZIP ingest: every safety rule refuses the upload before anything is stored; junk is skipped and reported."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from backend.data.datasets import (
    DatasetRejectedError,
    ZipLimits,
    ingest_zip,
    list_datasets,
    load_uploaded,
)
from conftest import png_bytes


def make_zip(entries: dict[str, bytes], mutate=None) -> bytes:
    """Build a ZIP in memory; `mutate(info)` may tamper with each entry's header."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mutate:
                mutate(info)
            archive.writestr(info, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digit_pngs(mnist) -> dict[int, list[bytes]]:
    """Three dark-on-light PNGs per digit from the MNIST test split."""
    out: dict[int, list[bytes]] = {d: [] for d in range(10)}
    for image, label in zip(mnist.x_test[:200], mnist.y_test[:200]):
        if len(out[int(label)]) < 3:
            out[int(label)].append(png_bytes(255 - image))
    return out


def digit_entries(digit_pngs, prefix: str = "") -> dict[str, bytes]:
    """ZIP entries laid out as <prefix><digit>/<n>.png."""
    return {f"{prefix}{d}/{i}.png": data for d, images in digit_pngs.items() for i, data in enumerate(images)}


def test_digit_folders_at_root(tmp_path, digit_pngs):
    manifest = ingest_zip(make_zip(digit_entries(digit_pngs)), tmp_path / "datasets")
    assert manifest["images"] == 30 and manifest["per_class"] == {str(d): 3 for d in range(10)}
    folder = tmp_path / "datasets" / manifest["id"]
    stored = json.loads((folder / "manifest.json").read_text())
    first = stored["files"][0]
    assert (folder / first["path"]).read_bytes() == digit_pngs[first["label"]][0]  # kept exactly as uploaded
    assert len(first["sha256"]) == 64
    dataset = load_uploaded(tmp_path / "datasets", manifest["id"])
    assert dataset.x.shape == (30, 28, 28, 1) and dataset.y.tolist().count(7) == 3
    assert dataset.holdout.dtype == bool
    assert [m["id"] for m in list_datasets(tmp_path / "datasets")] == [manifest["id"]]


def test_digit_folders_inside_one_top_folder_and_junk_skipped(tmp_path, digit_pngs):
    entries = digit_entries(digit_pngs, "my_digits/")
    entries.update(
        {
            "__MACOSX/my_digits/0/._0.png": b"mac",
            "my_digits/.DS_Store": b"x",
            "my_digits/3/Thumbs.db": b"x",
            "my_digits/4/notes.txt": b"not an image",
            "my_digits/5/broken.png": b"\x89PNG broken",
            "my_digits/readme.md": b"hello",
        }
    )
    manifest = ingest_zip(make_zip(entries), tmp_path / "datasets")
    assert manifest["images"] == 30
    reasons = {item["name"]: item["reason"] for item in manifest["skipped"]}
    assert "macOS" in reasons["__MACOSX/my_digits/0/._0.png"]
    assert "hidden" in reasons["my_digits/.DS_Store"]
    assert "system" in reasons["my_digits/3/Thumbs.db"]
    assert "not a usable image" in reasons["my_digits/4/notes.txt"]
    assert "not a usable image" in reasons["my_digits/5/broken.png"]
    assert "digit folder" in reasons["my_digits/readme.md"]


def test_versions_of_the_same_upload_never_overwrite(tmp_path, digit_pngs):
    data = make_zip(digit_entries(digit_pngs))
    first, second = ingest_zip(data, tmp_path / "d"), ingest_zip(data, tmp_path / "d")
    assert first["id"] != second["id"] and len(list_datasets(tmp_path / "d")) == 2


def symlink(info: zipfile.ZipInfo) -> None:
    """Mark an entry as a Unix symbolic link."""
    info.external_attr = 0o120777 << 16
    info.create_system = 3


def encrypted_zip(entries: dict[str, bytes]) -> bytes:
    """Build a ZIP whose entries carry the 'encrypted' flag in both of their headers."""
    data = bytearray(make_zip(entries))
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = data.find(signature)
        while start != -1:
            data[start + flag_offset] |= 0x1
            start = data.find(signature, start + 4)
    return bytes(data)


REFUSALS = [
    ("not-a-zip", lambda p: b"this is not a zip file", None, 400, "not a readable ZIP"),
    ("corrupt", lambda p: make_zip(digit_entries(p))[:-40], None, 400, "ZIP"),
    ("traversal", lambda p: make_zip({"../evil.png": p[1][0], **digit_entries(p)}), None, 400, "path traversal"),
    ("absolute", lambda p: make_zip({"/etc/evil.png": p[1][0], **digit_entries(p)}), None, 400, "absolute"),
    ("symlink", lambda p: make_zip({"0/link.png": b"/etc/passwd"}, symlink), None, 400, "symbolic link"),
    ("encrypted", lambda p: encrypted_zip({"0/a.png": p[0][0]}), None, 400, "encrypted"),
    ("no-digit-folders", lambda p: make_zip({"cats/a.png": p[0][0], "b.png": p[1][0]}), None, 400, "No digit folders"),
    (
        "only-junk",
        lambda p: make_zip({"0/notes.txt": b"text", "1/.hidden.png": p[1][0]}),
        None,
        422,
        "No usable images",
    ),
    ("too-many-entries", lambda p: make_zip(digit_entries(p)), ZipLimits(max_entries=10), 413, "entries"),
    ("too-large", lambda p: make_zip(digit_entries(p)), ZipLimits(max_total_bytes=2000), 413, "unpacks to more"),
    ("zip-bomb-ratio", lambda p: make_zip({"0/bomb.bmp": b"\0" * (3 << 20)}), None, 413, "expands more than"),
]


@pytest.mark.parametrize("build, limits, status, words", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals_leave_nothing_behind(tmp_path, digit_pngs, build, limits, status, words):
    datasets = tmp_path / "data" / "datasets"
    with pytest.raises(DatasetRejectedError) as info:
        ingest_zip(build(digit_pngs), datasets, limits)
    assert info.value.status == status and words in info.value.message
    assert not datasets.exists() or list(datasets.iterdir()) == []
    assert {p.name for p in tmp_path.iterdir()} <= {"data"} and not (tmp_path.parent / "evil.png").exists()


def test_header_sizes_are_not_trusted(tmp_path):
    bomb = bytearray(make_zip({"0/bomb.bmp": b"\0" * (3 << 20)}))
    # Rewrite the central directory's uncompressed size to a harmless-looking 100 bytes.
    central = bomb.rfind(b"PK\x01\x02")
    bomb[central + 24 : central + 28] = (100).to_bytes(4, "little")
    with pytest.raises(DatasetRejectedError):
        ingest_zip(bytes(bomb), tmp_path / "datasets")
    assert not (tmp_path / "datasets").exists() or list((tmp_path / "datasets").iterdir()) == []
