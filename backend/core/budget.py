"""Per-request budgets: a deadline that long work checks between steps, and one heavy-image lane per worker.

No Flask here: the web tier starts a deadline for each request, and the stem, segmentation and
saliency call `check()` between their steps. A step past the deadline raises `DeadlineExceeded`,
which the web tier answers with a 503 and Retry-After, freeing the thread at once.

Decoding a multi-megapixel PNG costs tenths of a second of CPU that cannot be interrupted, so
such images go through `heavy_lane`: one at a time per worker process. A second one arriving
meanwhile is refused at once with a 429 rather than queued: a queued request would hold a thread,
and a worker with every thread held stops taking even the cheapest digit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

RETRY_AFTER_SECONDS = 1
_deadline: ContextVar[float | None] = ContextVar("deadline", default=None)
_heavy = threading.BoundedSemaphore(1)


class BudgetExceeded(Exception):
    """A request ran over a budget; answered with `status` and Retry-After."""

    status: int

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DeadlineExceeded(BudgetExceeded):
    """The request ran past REQUEST_DEADLINE_SECONDS."""

    status = 503


class HeavyLaneBusy(BudgetExceeded):
    """Another large image is being decoded by this worker."""

    status = 429


def start(seconds: float | None) -> None:
    """Give the current request (this thread's context) `seconds` from now; None means no deadline."""
    _deadline.set(None if seconds is None else time.monotonic() + seconds)


def check(step: str) -> None:
    """Raise BudgetExceeded if the current request is past its deadline; `step` names the work abandoned."""
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded(
            f"The request ran out of time during {step} (REQUEST_DEADLINE_SECONDS): "
            "send a smaller image, or fewer images at once."
        )


@contextmanager
def heavy_lane(pixels: int, threshold: int) -> Iterator[None]:
    """Run the block in this worker's single lane for images over `threshold` pixels; small ones pass freely."""
    if pixels <= threshold:
        yield
        return
    if not _heavy.acquire(blocking=False):
        raise HeavyLaneBusy(
            f"The server is decoding another large image; this one ({pixels:,} pixels, over "
            f"HEAVY_IMAGE_PIXELS={threshold:,}) was not queued. Retry in a moment, or send a smaller image."
        )
    try:
        yield
    finally:
        _heavy.release()
