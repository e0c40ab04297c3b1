"""Occlusion saliency: which pixels drove a prediction, computed with the served LiteRT model.

Each 28x28 input is re-scored with a small patch blanked out at every position (one batched
model call). A pixel's heat is the average drop in the predicted digit's probability over the
patches covering it. Blanking background changes nothing, so heat lands on the ink that matters.
This needs no gradients, so web workers stay free of TensorFlow.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from backend.core.inference import LiteModel

PATCH = 6
STRIDE = 2
OVERLAY_SIDE = 224


def occlusion_heatmap(model: LiteModel, model_input: np.ndarray, digit: int) -> np.ndarray:
    """Return a 28x28 map in 0-1 of how much hiding each pixel lowers the digit's probability."""
    side = model_input.shape[0]
    starts = range(0, side - PATCH + 1, STRIDE)
    positions = [(top, left) for top in starts for left in starts]
    batch = np.repeat(model_input[np.newaxis], len(positions), axis=0)
    for i, (top, left) in enumerate(positions):
        batch[i, top : top + PATCH, left : left + PATCH] = 0.0
    base = float(model.predict(model_input[np.newaxis])[0, digit])
    drops = np.clip(base - model.predict(batch)[:, digit], 0.0, None)
    heat, cover = np.zeros((side, side), np.float32), np.zeros((side, side), np.float32)
    for drop, (top, left) in zip(drops, positions):
        heat[top : top + PATCH, left : left + PATCH] += drop
        cover[top : top + PATCH, left : left + PATCH] += 1.0
    heat /= np.maximum(cover, 1.0)
    peak = float(heat.max())
    return heat / peak if peak > 0 else heat


def overlay_png(model_input: np.ndarray, heatmap: np.ndarray) -> str:
    """Render the input in grey with the heatmap as a red-yellow glow, as a base64 PNG."""
    grey = np.repeat(model_input[..., np.newaxis] * 0.6, 3, axis=2)
    glow = np.stack([heatmap, heatmap**2, np.zeros_like(heatmap)], axis=2)  # black → red → yellow
    rgb = np.clip(grey * (1 - heatmap[..., np.newaxis] * 0.7) + glow, 0.0, 1.0)
    image = Image.fromarray((rgb * 255).astype(np.uint8)).resize((OVERLAY_SIDE, OVERLAY_SIDE), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()
