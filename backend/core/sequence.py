"""Reading a row of handwritten digits: segment the ink, then stem and classify every digit at once.

Segmentation works on the stem's ink map: connected blobs are grouped when they overlap
horizontally (a 5's detached hat, a 7's crossbar), groups much wider than tall are cut at their
thinnest columns (touching digits), and the pieces are read left to right. Every step is linear
or n log n in the number of blobs, and an image with far more blobs or digits than a row of
handwriting has is refused before any per-blob work.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from backend.core import budget
from backend.core.preprocessing import InvalidImageError, clean_ink, digit_from_ink

MERGE_OVERLAP = 0.5  # share of the narrower group's width two groups must share to be one digit
FRAGMENT_HEIGHT = 0.6  # a group shorter than this share of the median digit height is a broken-off stroke
SPLIT_ASPECT = 1.3  # wider than this many heights: several touching digits
DIGIT_ASPECT = 0.75  # a typical digit's width per height, to guess how many digits touch
MAX_BLOBS = 200  # separate ink blobs: a row of 40 digits broken into several strokes each stays well under
MAX_DIGITS = 64  # digits read from one image


@dataclass
class Segment:
    """One digit found in the image: its 28x28 model input and its box in image pixels."""

    model_input: np.ndarray
    box: tuple[int, int, int, int]  # x, y, width, height


def _blobs(ink: np.ndarray) -> tuple[np.ndarray, list[tuple[slice, slice]]]:
    """Label the 8-connected blobs of ink; return the labels and each blob's (rows, cols) box, blob 1 first."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((ink > 0).view(np.uint8), connectivity=8)
    if count - 1 > MAX_BLOBS:
        raise InvalidImageError(
            f"The image has {count - 1:,} separate marks, far more than a row of digits ({MAX_BLOBS} at most): "
            "send a photo or drawing of one row of digits on plain paper.",
            422,
        )
    boxes = [
        (slice(int(y), int(y + h)), slice(int(x), int(x + w)))
        for x, y, w, h in stats[1:, [cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT]]
    ]
    return labels, boxes


def _groups(slices: list[tuple[slice, slice]]) -> list[list[int]]:
    """Group blob labels into digits: overlapping columns first, then stray fragments to their nearest digit."""
    groups = _merge_overlapping(slices)
    boxes = [_group_box(slices, group) for group in groups]
    while len(groups) > 1:
        heights = [bottom - top for top, bottom, _, _ in boxes]
        smallest = int(np.argmin(heights))
        if heights[smallest] >= FRAGMENT_HEIGHT * float(np.median(heights)):
            break
        _, _, left, right = boxes[smallest]
        gaps = [
            max(b_left - right, left - b_right, 0) if i != smallest else np.inf
            for i, (_, _, b_left, b_right) in enumerate(boxes)
        ]
        nearest = int(np.argmin(gaps))
        fragment = groups.pop(smallest)
        boxes.pop(smallest)
        nearest -= nearest > smallest
        groups[nearest] += fragment
        boxes[nearest] = _group_box(slices, groups[nearest])
    return groups


def _group_box(slices: list, group: list[int]) -> tuple[int, int, int, int]:
    """Return (top, bottom, left, right) around a group of blobs."""
    parts = [slices[label - 1] for label in group]
    return (
        min(p[0].start for p in parts),
        max(p[0].stop for p in parts),
        min(p[1].start for p in parts),
        max(p[1].stop for p in parts),
    )


def _merge_overlapping(slices: list) -> list[list[int]]:
    """Group blob labels whose column ranges overlap enough to be parts of one digit, in one left-to-right sweep."""
    groups: list[list[int]] = []
    spans: list[tuple[int, int]] = []
    for label in sorted(range(1, len(slices) + 1), key=lambda label: slices[label - 1][1].start):
        groups.append([label])
        spans.append((slices[label - 1][1].start, slices[label - 1][1].stop))
        # A merge widens the newest group, which may then reach the one before: fold back while it does.
        while len(spans) > 1 and _overlap_enough(spans[-2], spans[-1]):
            (b0, b1), newest = spans.pop(), groups.pop()
            spans[-1] = (min(spans[-1][0], b0), max(spans[-1][1], b1))
            groups[-1] += newest
    return groups


def _overlap_enough(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Tell whether two column ranges share MERGE_OVERLAP of the narrower one's width."""
    overlap = min(a[1], b[1]) - max(a[0], b[0])
    return overlap >= MERGE_OVERLAP * min(a[1] - a[0], b[1] - b[0])


def _split_columns(ink: np.ndarray, digit_height: float) -> list[tuple[int, int]]:
    """Cut a group's ink into column ranges, one per digit, at the thinnest columns."""
    cols = np.nonzero(ink.any(axis=0))[0]
    left, right = int(cols.min()), int(cols.max()) + 1
    width = right - left
    if width <= SPLIT_ASPECT * digit_height:
        return [(left, right)]
    parts = max(2, int(round(width / (DIGIT_ASPECT * digit_height))))
    profile = ink[:, left:right].sum(axis=0)
    cuts, window = [], max(1, width // (2 * parts))
    for k in range(1, parts):
        centre = k * width // parts
        lo, hi = max(1, centre - window), min(width - 1, centre + window)
        cuts.append(left + lo + int(np.argmin(profile[lo:hi])))
    edges = [left, *cuts, right]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def segment_digits(gray: np.ndarray) -> list[Segment]:
    """Find the digits in a grey image (any polarity), left to right."""
    ink = clean_ink(gray)
    labels, slices = _blobs(ink)
    groups = _groups(slices)
    boxes = [_group_box(slices, group) for group in groups]
    digit_height = float(np.median([bottom - top for top, bottom, _, _ in boxes]))
    pieces = []
    for group, (top, bottom, left, right) in zip(groups, boxes):
        window = (slice(top, bottom), slice(left, right))  # work on the group's box, never the whole page
        group_ink = np.where(np.isin(labels[window], group), ink[window], 0.0).astype(np.float32)
        pieces += [(group_ink[:, a:b], top, left + a) for a, b in _split_columns(group_ink, digit_height)]
        if len(pieces) > MAX_DIGITS:
            raise InvalidImageError(
                f"The image holds more than {MAX_DIGITS} digits: send one row of at most {MAX_DIGITS} digits.", 422
            )
    segments = []
    for piece, top, left in pieces:
        rows, cols = np.nonzero(piece)
        if rows.size == 0:
            continue
        box = (
            left + int(cols.min()),
            top + int(rows.min()),
            int(cols.max() - cols.min() + 1),
            int(rows.max() - rows.min() + 1),
        )
        segments.append(Segment(digit_from_ink(piece), box))
        budget.check("reading the row")
    if not segments:
        raise InvalidImageError("No digits found: the page has no ink that stands out.", 422)
    return sorted(segments, key=lambda segment: segment.box[0])
