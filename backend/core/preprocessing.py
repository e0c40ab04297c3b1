"""The one preprocessing stem: any digit image in, the model's 28x28 MNIST-style input out.

Training, serving, ZIP ingest and the notebook all call `preprocess_bytes`, `preprocess_image`
or `preprocess_gray`, so the model never sees pixels prepared two different ways.
The steps repeat how MNIST itself was made: white ink on black, cropped to the ink, longest
side scaled to 20 px with anti-aliasing, then placed in 28x28 by its centre of mass. Before the
crop, photos of real paper are cleaned (backend.core.cleanup): uneven light is evened out and
ruled or squared paper and printed boxes are removed; both steps leave clean images bit-identical.
"""

from __future__ import annotations

import functools
import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from backend.core import budget
from backend.core.cleanup import flatten_illumination, remove_lines
from backend.core.config import DEFAULT_MAX_IMAGE_PIXELS

MNIST_SIDE = 28
DIGIT_BOX = 20
MNIST_CENTRE = 14.0  # MNIST's mean centre of mass, in pixel-index coordinates
WORK_SIDE = 1024  # large photos are analysed at this size at most: plenty for a 20 px digit
BORDER_FRACTION = 0.04  # share of each side read as "paper" when guessing the background
MIN_CONTRAST = 32.0  # grey levels between paper and ink below which an image counts as blank
MAX_NOISE_FLOOR = 0.25  # at most this share of the ink contrast is treated as paper texture and JPEG noise
NOISE_QUANTILE = 0.98  # the paper's noise: this quantile of the border's departures towards the ink
NOISE_MARGIN = 3.0  # the floor sits this many times above that noise: JPEG rings more near strokes than on bare paper
INK_SATURATION_PERCENTILE = 70  # MNIST strokes are saturated from about their 70th percentile
MIN_COMPONENT_SHARE = 0.05  # blobs lighter than this share of the heaviest one are specks
SUPPORTED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
_LEVELS = np.arange(256, dtype=np.float32)
Image.init()  # register every plugin now: Image.open(formats=...) only knows loaded ones
# Pillow warns between its pixel limit and twice it; decode_image enforces max_pixels itself.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
cv2.setNumThreads(1)  # one web worker per core: OpenCV's own thread pool would only contend


class InvalidImageError(ValueError):
    """An upload that cannot become a digit: undecodable, empty, blank or too large."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Read only an image's header, refusing empty, unreadable or oversized files before any pixel is decoded.

    A big JPEG is set to decode at reduced size, so `decoded_pixels` of the result is what it will cost.
    """
    if not data:
        raise InvalidImageError("The file is empty: send a PNG, JPEG, BMP, GIF, WebP or TIFF image.")
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(f"The image is far too large to decode ({exc}).", status=413) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidImageError(
            "The file is not a readable image: send a PNG, JPEG, BMP, GIF, WebP or TIFF image."
        ) from exc
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImageError(
            f"The image is {width}x{height} pixels, over the limit of {max_pixels:,} pixels "
            "(MAX_IMAGE_PIXELS): send a smaller image.",
            status=413,
        )
    if image.format == "JPEG":
        image.draft(image.mode, (WORK_SIDE, WORK_SIDE))  # decode big photos at reduced size
    return image


def decoded_pixels(image: Image.Image) -> int:
    """Return how many pixels decoding an opened image will produce: its cost in CPU and memory."""
    return image.width * image.height


def load_image(image: Image.Image) -> Image.Image:
    """Decode an opened image's pixels and turn phone photos upright."""
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise InvalidImageError("The image is truncated or corrupt: send the complete file.") from exc
    return image


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode image bytes, refusing oversized images before their pixels are decoded."""
    return load_image(open_image(data, max_pixels))


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Return the image as 8-bit grey levels (uint8), with any transparency composited away."""
    image = _limit_size(_readable_mode(image))
    if image.mode == "L":
        return np.asarray(image)
    if image.mode.startswith("I;16"):
        return _grey_levels(np.asarray(image, dtype=np.float32) / 257.0)
    if image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)
        peak = float(values.max()) if values.size else 0.0
        return _grey_levels(values * (255.0 / peak) if peak > 255.0 else values)
    if image.mode == "P" or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        gray = np.asarray(rgba.convert("L"), dtype=np.float32)
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        return _grey_levels(_composite(gray, alpha))
    return np.asarray(image.convert("L"))


def _readable_mode(image: Image.Image) -> Image.Image:
    """Bring colour spaces that Pillow cannot convert to grey (LAB) to their lightness channel."""
    if image.mode == "LAB":
        return image.getchannel("L")
    return image


def _limit_size(image: Image.Image) -> Image.Image:
    """Shrink very large images to WORK_SIDE, keeping the aspect ratio."""
    if max(image.size) <= WORK_SIDE:
        return image
    if image.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        image = image.convert("RGBA" if "A" in image.getbands() or image.mode == "P" else "RGB")
    scale = WORK_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BOX)


def _composite(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Flatten transparency onto the background that makes the drawing readable."""
    opaque = alpha > 0.5
    if opaque.all():
        return gray
    if not opaque.any():
        raise InvalidImageError("The image is fully transparent: draw or photograph a digit.", 422)
    if opaque.mean() < 0.5:
        # Strokes on a transparent canvas: put them on the contrasting colour.
        background = 255.0 if np.median(gray[opaque]) < 128 else 0.0
    else:
        # A picture with transparent margins: extend its own paper colour.
        background = float(np.median(gray[opaque]))
    return gray * alpha + background * (1.0 - alpha)


def preprocess_gray(gray: np.ndarray) -> np.ndarray:
    """Turn a 2-D grey-level array (0-255, any polarity) into the 28x28 float32 model input."""
    return digit_from_ink(clean_ink(gray))


def clean_ink(gray: np.ndarray) -> np.ndarray:
    """Return the page's ink (white on black, 0-1): light evened out, printed lines and specks removed."""
    return remove_specks(remove_lines(ink_map(flatten_illumination(_grey_levels(gray)))))


def digit_from_ink(ink: np.ndarray) -> np.ndarray:
    """Crop an ink map (white digit on black, 0-1) to its ink and lay it out as MNIST does."""
    left, top, width, height = cv2.boundingRect((ink > 0).view(np.uint8))
    if width == 0:
        raise InvalidImageError("The image is blank: no ink stands out from the background.", 422)
    return _centre_by_mass(_fit_to_box(ink[top : top + height, left : left + width]))


def ink_map(gray: np.ndarray) -> np.ndarray:
    """Make the ink white on black, suppress paper and noise, and scale ink to 0-1."""
    levels = _grey_levels(gray)
    smoothed = cv2.medianBlur(levels, 3) if min(levels.shape) >= 3 else levels
    border = _border_index(levels.shape)
    paper = _quantile(smoothed.ravel()[border], 0.5)
    dark_reach = paper - float(smoothed.min())
    bright_reach = float(smoothed.max()) - paper
    dark_ink = dark_reach > bright_reach  # dark ink on light paper: the usual photo or scan
    reach = dark_reach if dark_ink else bright_reach
    if reach < MIN_CONTRAST:
        raise InvalidImageError("The image is blank: no ink stands out from the background.", 422)
    # Clean paper (MNIST, a canvas) keeps every anti-aliased grey level of the strokes; noisy paper loses its noise.
    departures = levels.ravel()[border].astype(np.float32) - paper
    noise = max(_quantile(-departures if dark_ink else departures, NOISE_QUANTILE), 0.0)
    floor = min(MAX_NOISE_FLOOR, NOISE_MARGIN * noise / reach)
    # A pixel's ink strength depends only on its grey level, so the arithmetic runs on a 256-entry
    # table indexed by ink level (255 - grey level for dark ink) instead of on every pixel.
    ink_paper = 255.0 - paper if dark_ink else paper
    strength = np.maximum((_LEVELS - ink_paper) / reach - floor, 0.0) / (1.0 - floor)
    strength = np.minimum(strength, 1.0)
    pixels_per_level = np.bincount(levels.ravel(), minlength=256)
    saturation = _saturation(strength, pixels_per_level[::-1] if dark_ink else pixels_per_level)
    table = np.minimum(strength / max(saturation, 1e-6), 1.0)
    return (table[::-1] if dark_ink else table)[levels]


def _grey_levels(gray: np.ndarray) -> np.ndarray:
    """Return the image as 8-bit grey levels, rounding any other number type."""
    gray = np.asarray(gray)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise InvalidImageError("The image has no pixels.", 422)
    if gray.dtype == np.uint8:
        return gray
    finite = np.nan_to_num(gray, nan=0.0, posinf=255.0, neginf=0.0)  # float TIFFs may hold NaN or inf
    return np.clip(np.rint(finite), 0, 255).astype(np.uint8)


def _saturation(strength: np.ndarray, pixels: np.ndarray) -> float:
    """Return the INK_SATURATION_PERCENTILE (nearest rank) of the inked pixels' strengths.

    `strength` rises from 0 (paper) along the ink levels and `pixels` counts the pixels at each.
    """
    running = np.cumsum(pixels)
    paper_levels = int(np.searchsorted(strength, 0.0, side="right"))
    paper_pixels = int(running[paper_levels - 1]) if paper_levels else 0
    inked = int(running[-1]) - paper_pixels
    if inked == 0:
        raise InvalidImageError("The image is blank: no ink stands out from the background.", 422)
    rank = min(inked - 1, int(INK_SATURATION_PERCENTILE / 100 * inked))
    return float(strength[np.searchsorted(running, paper_pixels + rank, side="right")])


def _quantile(values: np.ndarray, q: float) -> float:
    """Return the q-quantile (nearest rank) with one partition: np.percentile costs 10x more on the hot path."""
    rank = min(len(values) - 1, int(q * len(values)))
    return float(np.partition(values, rank)[rank])


@functools.lru_cache(maxsize=64)
def _border_index(shape: tuple[int, int]) -> np.ndarray:
    """Return the flat indices of an image's outer frame, where paper is most likely."""
    height, width = shape
    band = max(1, round(BORDER_FRACTION * min(height, width)))
    index = np.arange(height * width).reshape(shape)
    return np.concatenate(
        [index[:band].ravel(), index[-band:].ravel(), index[:, :band].ravel(), index[:, -band:].ravel()]
    )


def remove_specks(ink: np.ndarray) -> np.ndarray:
    """Zero out specks: connected blobs much lighter than the main stroke."""
    count, labels = cv2.connectedComponents((ink > 0).view(np.uint8), connectivity=8)
    if count <= 2:  # label 0 is the background
        return ink
    masses = np.bincount(labels.ravel(), weights=ink.ravel(), minlength=count)
    masses[0] = 0.0
    keep = masses >= MIN_COMPONENT_SHARE * masses.max()
    keep[0] = False
    return np.where(keep[labels], ink, 0.0).astype(np.float32)


def _fit_to_box(digit: np.ndarray) -> np.ndarray:
    """Scale the cropped digit so its longest side is DIGIT_BOX pixels, keeping its shape."""
    height, width = digit.shape
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):  # already MNIST-sized, as MNIST's own digits are
        resized = digit
    else:
        resized = np.clip(
            np.asarray(Image.fromarray(digit, mode="F").resize(size, Image.Resampling.LANCZOS)), 0.0, None
        )
    peak = float(resized.max())
    return resized / peak if peak > 0 else resized


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Place the digit on a 28x28 black field with its centre of mass at MNIST's centre."""
    total = float(digit.sum())
    centre_row = float(digit.sum(axis=1) @ np.arange(digit.shape[0])) / total
    centre_col = float(digit.sum(axis=0) @ np.arange(digit.shape[1])) / total
    top = int(round(MNIST_CENTRE - centre_row))
    left = int(round(MNIST_CENTRE - centre_col))
    top = min(max(top, 0), MNIST_SIDE - digit.shape[0])
    left = min(max(left, 0), MNIST_SIDE - digit.shape[1])
    field = np.zeros((MNIST_SIDE, MNIST_SIDE), dtype=np.float32)
    field[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return field


def preprocess_image(image: Image.Image) -> np.ndarray:
    """Turn a decoded PIL image of any mode into the 28x28 float32 model input."""
    gray = to_grayscale(image)
    budget.check("preprocessing")
    return preprocess_gray(gray)


def preprocess_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Turn uploaded image bytes into the 28x28 float32 model input."""
    image = decode_image(data, max_pixels=max_pixels)
    budget.check("decoding")
    return preprocess_image(image)


def preprocess_many(grays: np.ndarray) -> np.ndarray:
    """Run the stem over a stack of grey-level digits, e.g. MNIST arrays: (n, h, w) -> (n, 28, 28)."""
    return np.stack([preprocess_gray(gray) for gray in grays]) if len(grays) else np.zeros((0, 28, 28), np.float32)
