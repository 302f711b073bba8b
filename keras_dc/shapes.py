"""A folder of generated images of drawn shapes, one subfolder per shape: "my own images" for a
check of the recipes on a folder and for tests of folder data, made without any download.

Each image is a filled shape (disc, square, triangle, cross) of random size, position and colour
on a random background, with noise, saved as PNG under FOLDER/SHAPE/NNNNN.png.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle", "cross")


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    w = r / 3  # cross: two bars of width 2r/3
    return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
            (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
            (cx - r, cy - w), (cx - w, cy - w)]


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 (size, size, 3) image of `shape`."""
    background, colour = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.2, 0.4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    if shape == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(c) for c in colour))
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=tuple(int(c) for c in colour))
    noisy = np.asarray(image, np.float32) + rng.normal(0.0, 8.0, (size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def write_shapes_folder(folder: str, images: int, size: int = 64, seed: int = 0) -> list[str]:
    """Writes `images` PNGs, shapes in turn, under folder/SHAPE/ (each to a new name, then renamed: no
    planted link is followed); returns their paths."""
    from keras_dc.workdir import atomic_write_bytes

    rng = np.random.default_rng(seed)
    paths = []
    for index in range(images):
        shape = SHAPES[index % len(SHAPES)]
        path = os.path.join(folder, shape, f"{index:05d}.png")
        buffer = io.BytesIO()
        Image.fromarray(draw_shape(shape, size, rng)).save(buffer, format="PNG")
        atomic_write_bytes(path, buffer.getvalue(), durable=False)
        paths.append(path)
    return paths
