"""Stem steps for photos of real paper: uneven light, ruled and squared paper, printed boxes; and MNIST deskewing.

Each step is a pure numpy/OpenCV function that returns its input object unchanged when there is
nothing to correct, so the stem stays bit-identical on MNIST and on clean uploads, and costs only
a quick check there. The stem (backend.core.preprocessing.clean_ink) flattens the light on the
grey levels, then, on the ink map, removes long straight lines before specks are dropped and the
digit is cropped.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

MIN_PHOTO_SIDE = 48  # smaller images (MNIST's 28 px) are no photo of a page: no shadows, no box round a legible digit
ILLUMINATION_SIDE = 96  # the paper's light is estimated on a copy at most this large: light varies slowly
BACKGROUND_KERNEL_SHARE = 0.2  # closing window, as share of the image side: wider than any pen stroke
FLAT_SHARE = 0.2  # light varying by less than this share of the ink contrast is left alone (the old stem copes)
LIGHT_BLOCKS = 4  # the quick check compares the paper in a 4x4 grid of blocks
MIN_BACKGROUND = 8.0  # grey level floor when dividing by the paper's light, so black corners do not explode
LINE_SIDE = 160  # long lines are looked for on a pooled copy at most this large
LINE_SPAN = 0.9  # a straight run this share of the image side long crosses the page: ruling, a grid, a margin
SEGMENT_SPAN = 0.3  # shorter runs count as printed lines only when both ends meet a perpendicular line (boxes, cells)
LINE_SLACK = 0.012  # lines may drift by this share of the side from straight: a photo tilted by about 1.5 degrees
CORNER_REACH = 2  # pooled pixels between a segment's end and the perpendicular line it meets
FRAME_SIDE_SHARE = 0.6  # each side of a box is drawn along at least this share of its length
MAX_LINE_SHARE = 0.06  # a box's sides are at most this thick for their length
THICK_SIDE_SHARE = 0.5  # a side is a printed line when most of it is thinner than that (digits may touch it)
ENCLOSED_SHARE = 0.02  # a box holds ink of its own covering at least this share of its inside
STROKE_SHARE = 0.75  # ink thicker across a line than this share of the pen's stroke width is a stroke on the line
MIN_LEFT_SHARE = 0.05  # removing lines must leave this share of the ink, or the lines were the digit


# --- Illumination -------------------------------------------------------------------------------


def flatten_illumination(gray: np.ndarray) -> np.ndarray:
    """Even out shadows and lamp gradients (uint8 in, uint8 out); return `gray` itself when the light is even enough."""
    height, width = gray.shape
    if min(height, width) < MIN_PHOTO_SIDE:
        return gray
    stride = max(1, max(height, width) // ILLUMINATION_SIDE)  # a strided view: the quick check costs microseconds
    if not _uneven(gray[::stride, ::stride]):
        return gray
    sample = gray[:: max(1, stride // 4), :: max(1, stride // 4)]
    scale = min(1.0, ILLUMINATION_SIDE / max(sample.shape))
    size = (max(1, round(sample.shape[1] * scale)), max(1, round(sample.shape[0] * scale)))
    small = cv2.resize(sample, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else sample
    side = max(3, round(BACKGROUND_KERNEL_SHARE * max(small.shape)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (side, side))
    closed = cv2.morphologyEx(small, cv2.MORPH_CLOSE, kernel)  # paper under dark ink
    opened = cv2.morphologyEx(small, cv2.MORPH_OPEN, kernel)  # board under bright ink
    # The ink vanishes from the right estimate, so that one varies least: it is only the paper's light.
    dark_ink = int(np.ptp(closed)) <= int(np.ptp(opened))
    background = closed if dark_ink else opened
    if not _too_uneven(background, gray, dark_ink):
        return gray
    background = cv2.blur(
        background.astype(np.float32), (side // 4 * 2 + 1,) * 2
    )  # no seams from the closing's windows
    light = cv2.resize(background, (width, height), interpolation=cv2.INTER_LINEAR)
    if dark_ink:  # paper and ink both reflect the light they get: divide it out
        paper = float(background.max())
        flat = gray.astype(np.float32) * (paper / np.maximum(light, MIN_BACKGROUND))
    else:  # a lit board: chalk adds to the board's own glow
        flat = gray.astype(np.float32) - light + float(background.min())
    return np.clip(np.rint(flat), 0, 255).astype(np.uint8)


def _uneven(small: np.ndarray) -> bool:
    """Quick check on blocks: could the paper's light vary by more than FLAT_SHARE of the ink contrast?

    The brightest pixel of each block is paper under dark ink, the darkest is the board under
    bright ink; under even light one of the two is about the same in every block.
    """
    height, width = small.shape
    block_h, block_w = height // LIGHT_BLOCKS, width // LIGHT_BLOCKS
    if block_h < 2 or block_w < 2:
        return False
    blocks = small[: block_h * LIGHT_BLOCKS, : block_w * LIGHT_BLOCKS].reshape(
        LIGHT_BLOCKS, block_h, LIGHT_BLOCKS, block_w
    )
    brightest, darkest = blocks.max(axis=(1, 3)), blocks.min(axis=(1, 3))
    top, bottom = int(brightest.max()), int(darkest.min())
    spread = min(top - int(brightest.min()), int(darkest.max()) - bottom)
    return spread > FLAT_SHARE * (top - bottom)


def _too_uneven(background: np.ndarray, gray: np.ndarray, dark_ink: bool) -> bool:
    """Tell whether a paper-light estimate varies by more than FLAT_SHARE of the ink's contrast against it."""
    contrast = float(background.max()) - float(gray.min()) if dark_ink else float(gray.max()) - float(background.min())
    return float(np.ptp(background)) > FLAT_SHARE * contrast


# --- Lines and frames ---------------------------------------------------------------------------


def remove_lines(ink: np.ndarray) -> np.ndarray:
    """Erase printed straight lines (ruling, grids, margins, boxes) from an ink map; return `ink` itself if none."""
    pooled, pool = _pooled_mask(ink)
    if not _may_hold_lines(pooled, min(ink.shape)):
        return ink
    horizontal, vertical = _confirmed_lines(pooled)
    if not horizontal.any() and not vertical.any():
        return ink
    mask = (ink > 0).view(np.uint8)
    horizontal, vertical = _unpooled(horizontal, pool, ink.shape), _unpooled(vertical, pool, ink.shape)
    stroke = _stroke_width(mask, horizontal | vertical)
    if stroke == 0:
        return ink  # every inked pixel lies on a "line": the digit itself is straight, or it is not there
    limit = max(3, math.ceil(STROKE_SHARE * stroke))
    cleaned = ink
    for zone, along_rows in ((horizontal, True), (vertical, False)):
        # A pen stroke lying along a line (a 7's bar on the ruling) is thicker across than the line: not line.
        zone = zone.astype(bool) & ~_thick(mask, limit, along_rows)
        if zone.any():
            cleaned = _erase_in_zone(cleaned, zone, along_rows)
    # Nothing left but crumbs: the "line" was the digit itself, e.g. a tightly cropped 1.
    return cleaned if float(cleaned.sum()) >= MIN_LEFT_SHARE * float(ink.sum()) else ink


def _stroke_width(mask: np.ndarray, lines: np.ndarray) -> float:
    """Estimate the pen's stroke width from the ink off the lines: twice its 90th-percentile distance to paper."""
    free = (mask.astype(bool) & ~lines.astype(bool)).view(np.uint8)
    if not free.any():
        return 0.0
    distance = cv2.distanceTransform(free, cv2.DIST_L2, 3)
    return 2.0 * float(np.percentile(distance[free.astype(bool)], 90))


def _may_hold_lines(mask: np.ndarray, image_side: int) -> bool:
    """Quick check: is any band of rows or columns inked far enough across for a page line, or for two box sides?"""
    height, width = mask.shape
    frames_possible = image_side >= MIN_PHOTO_SIDE
    reach = SEGMENT_SPAN if frames_possible else LINE_SPAN
    if np.count_nonzero(mask.any(axis=0)) < reach * width and np.count_nonzero(mask.any(axis=1)) < reach * height:
        return False  # the ink is too narrow and too short for any line: MNIST's own digits stop here
    slack = _slack(mask.shape)
    rows, cols = _cover(mask, slack), _cover(mask.T, slack)
    if rows.max(initial=0) >= LINE_SPAN * width or cols.max(initial=0) >= LINE_SPAN * height:
        return True
    # A box needs two long sides each way, far enough apart to hold a digit of a useful size.
    return (
        frames_possible
        and _apart(rows >= SEGMENT_SPAN * width, height)
        and _apart(cols >= SEGMENT_SPAN * height, width)
    )


def _apart(long_bands: np.ndarray, side: int) -> bool:
    """Tell whether the first and last long band lie at least SEGMENT_SPAN of the side apart."""
    found = np.flatnonzero(long_bands)
    return found.size >= 2 and found[-1] - found[0] >= SEGMENT_SPAN * side


def _cover(mask: np.ndarray, slack: int) -> np.ndarray:
    """For each band of 2 * slack + 1 rows, how many columns hold ink in it: a tilted line's length."""
    height = mask.shape[0]
    span = 2 * slack + 1
    if height < span:
        return np.zeros(0, np.int64)
    band = np.logical_or.reduce([mask[k : height - span + 1 + k] for k in range(span)])
    return np.count_nonzero(band, axis=1)


def _slack(shape: tuple[int, ...]) -> int:
    """Return how many pooled pixels a printed line may drift from straight across the image."""
    return max(1, round(LINE_SLACK * max(shape)))


def _pooled_mask(ink: np.ndarray) -> tuple[np.ndarray, int]:
    """Shrink the ink map by a whole factor to LINE_SIDE at most, marking every block with any ink: (mask, factor)."""
    mask = (ink > 0).view(np.uint8)
    pool = math.ceil(max(mask.shape) / LINE_SIDE)
    if pool == 1:
        return mask, pool
    # Each pixel takes the maximum of the pool x pool block starting at it; every pool-th one is a block's.
    grown = cv2.dilate(mask, np.ones((pool, pool), np.uint8), anchor=(0, 0))
    return np.ascontiguousarray(grown[::pool, ::pool]), pool


def _unpooled(zone: np.ndarray, pool: int, shape: tuple[int, int]) -> np.ndarray:
    """Blow a pooled 0/1 mask back up by `pool` to `shape`."""
    if pool == 1:
        return zone
    return np.repeat(np.repeat(zone, pool, axis=0), pool, axis=1)[: shape[0], : shape[1]]


def _runs(mask: np.ndarray, length: int, slack: int, along_rows: bool) -> np.ndarray:
    """Return the zones (thickened by `slack`) of straight runs at least `length` long, along rows or columns."""
    along = (length, 1) if along_rows else (1, length)  # (width, height) for OpenCV
    # Grown by the slack, a tilted line stays in one row longer and a faint one has no gaps.
    thick = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * slack + 1, 2 * slack + 1)))
    return cv2.morphologyEx(thick, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, along))


def _confirmed_lines(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Find the printed lines in a pooled ink mask: (horizontal zones, vertical zones), 0/1 each.

    A run across the page is ruling, a grid or a margin. A shorter run is a form's line only when
    both ends meet a line across the page (a row of cells), or when it is one side of a frame
    drawn round other ink (a box). A digit's own straight strokes are neither.
    """
    height, width = mask.shape
    slack = _slack(mask.shape)
    short_h = _runs(mask, max(3, round(SEGMENT_SPAN * width)), slack, along_rows=True)
    short_v = _runs(mask, max(3, round(SEGMENT_SPAN * height)), slack, along_rows=False)
    if not short_h.any() and not short_v.any():
        return short_h, short_v
    crossing = [
        _crossing_page(runs, along_rows)
        if _longest(runs, along_rows) >= LINE_SPAN * (width if along_rows else height)
        else np.zeros_like(runs)
        for runs, along_rows in ((short_h, True), (short_v, False))
    ]
    lines = [crossing[0].copy(), crossing[1].copy()]
    if crossing[0].any() or crossing[1].any():  # cells of a form row: sides that end on lines across the page
        for k, (runs, along_rows) in enumerate(((short_h, True), (short_v, False))):
            count, labels, stats, _ = cv2.connectedComponentsWithStats(runs & ~crossing[k], connectivity=8)
            for label in range(1, count):
                left, top, w, h = stats[label, :4]
                if not _meets_at_both_ends(crossing[1 - k], left, top, w, h, along_rows):
                    continue
                own = (labels[top : top + h, left : left + w] == label) & ~crossing[1 - k][
                    top : top + h, left : left + w
                ].astype(bool)
                crop = mask[top : top + h, left : left + w]
                limit = round(MAX_LINE_SHARE * (w if along_rows else h)) + 2
                inked = np.count_nonzero(crop & own)
                # A pen stroke that happens to join two grid lines is thick; a cell's printed side is thin.
                if inked and np.count_nonzero(_thick(crop, limit, along_rows) & own) <= THICK_SIDE_SHARE * inked:
                    lines[k][labels == label] = 1
    rest_h, rest_v = short_h & ~lines[0], short_v & ~lines[1]
    count, labels, stats, _ = cv2.connectedComponentsWithStats(rest_h | rest_v, connectivity=8)
    band = 2 * slack + 3
    for label in range(1, count):
        left, top, w, h = stats[label, :4]
        if w < SEGMENT_SPAN * width or h < SEGMENT_SPAN * height or min(w, h) <= 2 * band:
            continue
        frame = labels[top : top + h, left : left + w] == label
        if _is_frame(
            frame,
            rest_h[top : top + h, left : left + w],
            rest_v[top : top + h, left : left + w],
            mask[top : top + h, left : left + w],
            band,
        ):
            # Only the sides: a stroke touching the box joins the component but is not part of the box.
            sides = np.zeros_like(frame)
            edge = band + round(MAX_LINE_SHARE * min(w, h)) + 2
            sides[:edge] = sides[-edge:] = True
            lines[0][top : top + h, left : left + w] |= (
                frame & sides & rest_h[top : top + h, left : left + w].astype(bool)
            ).view(np.uint8)
            sides[:] = False
            sides[:, :edge] = sides[:, -edge:] = True
            lines[1][top : top + h, left : left + w] |= (
                frame & sides & rest_v[top : top + h, left : left + w].astype(bool)
            ).view(np.uint8)
    return lines[0], lines[1]


def _longest(runs: np.ndarray, along_rows: bool) -> int:
    """Return how far the runs reach along rows (or columns) at most: a cheap bound before labelling them."""
    return int(np.count_nonzero(runs.any(axis=0 if along_rows else 1)))


def _crossing_page(runs: np.ndarray, along_rows: bool) -> np.ndarray:
    """Keep the runs that span LINE_SPAN of the image side: ruling, grid lines, margins."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(runs, connectivity=8)
    side = runs.shape[1] if along_rows else runs.shape[0]
    keep = stats[:, cv2.CC_STAT_WIDTH if along_rows else cv2.CC_STAT_HEIGHT] >= LINE_SPAN * side
    keep[0] = False
    return keep[labels].view(np.uint8)


def _is_frame(frame: np.ndarray, runs_h: np.ndarray, runs_v: np.ndarray, mask: np.ndarray, band: int) -> bool:
    """Tell whether a component of straight runs is a box (four sides) drawn round ink of its own."""
    sides = (
        (frame[:band] & runs_h[:band].astype(bool)).any(axis=0),
        (frame[-band:] & runs_h[-band:].astype(bool)).any(axis=0),
        (frame[:, :band] & runs_v[:, :band].astype(bool)).any(axis=1),
        (frame[:, -band:] & runs_v[:, -band:].astype(bool)).any(axis=1),
    )
    if min(float(side.mean()) for side in sides) < FRAME_SIDE_SHARE:
        return False
    # Printed sides are thin for their length; a pen's 0 or square 4 has thick sides.
    limit = round(MAX_LINE_SHARE * min(frame.shape)) + 2
    thick_across_rows, thick_across_cols = _thick(mask, limit, True), _thick(mask, limit, False)
    for side, thick in (
        (np.s_[:band], thick_across_rows),
        (np.s_[-band:], thick_across_rows),
        (np.s_[:, :band], thick_across_cols),
        (np.s_[:, -band:], thick_across_cols),
    ):
        inked = np.count_nonzero(mask[side])
        if inked == 0 or np.count_nonzero(thick[side]) > THICK_SIDE_SHARE * inked:
            return False
    # Ink well inside, away from the sides: a 0 or a square 4 is a frame of straight strokes round nothing.
    inside = mask[2 * band : -2 * band, 2 * band : -2 * band]
    return inside.size > 0 and int(np.count_nonzero(inside)) >= ENCLOSED_SHARE * inside.size


def _thick(mask: np.ndarray, limit: int, vertical: bool) -> np.ndarray:
    """Keep ink at least `limit` pixels thick down the columns (vertical) or along the rows: too thick for a line."""
    size = (1, limit) if vertical else (limit, 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, size)
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def _meets_at_both_ends(other: np.ndarray, left: int, top: int, w: int, h: int, along_rows: bool) -> bool:
    """Tell whether perpendicular runs touch both ends of a run's bounding box."""
    r = CORNER_REACH
    if along_rows:
        ends = (
            other[top : top + h, max(0, left - r) : left + r + 1],
            other[top : top + h, max(0, left + w - 1 - r) : left + w + r],
        )
    else:
        ends = (
            other[max(0, top - r) : top + r + 1, left : left + w],
            other[max(0, top + h - 1 - r) : top + h + r, left : left + w],
        )
    return all(end.any() for end in ends)


def _erase_in_zone(ink: np.ndarray, zone: np.ndarray, along_rows: bool) -> np.ndarray:
    """Zero the ink inside a line's zone unless it belongs to a stroke that leaves the zone: crossing strokes stay.

    Ink is followed across the line (down each column for a horizontal line): a run of ink that
    stays inside the zone is the line, a run that goes on beyond it is a stroke crossing or touching it.
    """
    mask = ink > 0
    inside = zone.astype(bool)
    if not along_rows:
        mask, inside = mask.T, inside.T
    # Number the runs of ink down each column (column-major order keeps every run contiguous).
    flat = np.asfortranarray(mask).ravel(order="F")
    previous = np.concatenate([[False], flat[:-1]])
    previous[:: mask.shape[0]] = False  # a column's first pixel starts a run
    runs = np.cumsum(flat & ~previous) * flat
    in_zone = np.asfortranarray(inside).ravel(order="F")
    beyond = np.bincount(runs, weights=flat & ~in_zone, minlength=runs.max() + 1)  # each run's pixels outside the zone
    erase = (flat & in_zone & (beyond[runs] == 0)).reshape(mask.shape, order="F")
    if not along_rows:
        erase = erase.T
    return np.where(erase, 0.0, ink).astype(np.float32)


# --- Deskewing ----------------------------------------------------------------------------------


def deskew(digit: np.ndarray) -> np.ndarray:
    """Shear a 28x28 stem output upright by its second moments, as in the classic MNIST deskewing results."""
    total = float(digit.sum())
    if total <= 0:
        return digit
    rows, cols = np.mgrid[0 : digit.shape[0], 0 : digit.shape[1]]
    centre_row = float((rows * digit).sum()) / total
    centre_col = float((cols * digit).sum()) / total
    mu02 = float(((rows - centre_row) ** 2 * digit).sum()) / total
    mu11 = float(((rows - centre_row) * (cols - centre_col) * digit).sum()) / total
    if mu02 < 1e-6:
        return digit
    skew = mu11 / mu02
    # Output pixel (r, c) reads input (r, c + skew * (r - centre_row)): the centre of mass stays put.
    matrix = np.float32([[1, skew, -skew * centre_row], [0, 1, 0]])
    return cv2.warpAffine(
        digit, matrix, (digit.shape[1], digit.shape[0]), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0.0
    )


# --- The stem with the new steps ----------------------------------------------------------------
