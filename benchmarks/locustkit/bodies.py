"""The sample images as request bodies, encoded once at import.

Encoding multipart per request would cost the load generator CPU that the backend shares on a small machine.
"""

from __future__ import annotations

import io
import secrets
import zipfile
from dataclasses import dataclass

from benchmarks.make_samples import SAMPLES_DIR, load_samples

BOUNDARY = f"digitlab-{secrets.token_hex(12)}"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def multipart_part(field: str, filename: str, data: bytes, content_type: str) -> bytes:
    """Encode one file field of a multipart/form-data body (without the closing boundary)."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    )
    return head.encode() + data + b"\r\n"


def multipart_field(field: str, value: str) -> bytes:
    """Encode one plain form field of a multipart/form-data body."""
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode()


def multipart_body(parts: list[bytes]) -> bytes:
    """Join encoded parts into a complete multipart/form-data body."""
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


@dataclass(frozen=True)
class Sample:
    """One sample image and its pre-encoded request parts."""

    style: str
    label: int
    name: str
    data: bytes
    single: bytes  # the whole /predict body
    batch_part: bytes  # this image as one `files` part of a /predict/batch body


def sample(style: str, label: int, name: str, data: bytes) -> Sample:
    """Wrap a sample image with its request bodies."""
    content_type = "image/jpeg" if name.endswith(".jpg") else "image/png"
    return Sample(
        style,
        label,
        name,
        data,
        single=multipart_body([multipart_part("file", name, data, content_type)]),
        batch_part=multipart_part("files", name, data, content_type),
    )


SAMPLES = [sample(*row) for row in load_samples(SAMPLES_DIR)]


def samples_zip(samples: list[Sample]) -> bytes:
    """Pack the samples as a training ZIP with one folder per digit, as /upload_and_retrain expects."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # PNG/JPEG are compressed already
        for one in samples:
            archive.writestr(f"{one.label}/{one.name}", one.data)
    return buffer.getvalue()


def upload_body(samples: list[Sample], epochs: int) -> bytes:
    """Build the /upload_and_retrain body: the samples as a ZIP and the epoch count."""
    return multipart_body(
        [
            multipart_part("file", "samples.zip", samples_zip(samples), "application/zip"),
            multipart_field("epochs", str(epochs)),
        ]
    )
