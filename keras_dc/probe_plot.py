"""Top-1 per probed layer for several linear-probe reports in one figure, as the paper plots it.

Reads the JSON of tools/linear_probe.py (`{"layers": {name: {"top1", ...}}, ...}`); draws one line per
report over the layers in network order, writes a PNG and the same picture to TensorBoard.
"""

from __future__ import annotations

import io
import json
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
from matplotlib import pyplot  # noqa: E402


class ProbeReportError(ValueError):
    """A file is not a linear-probe report (unreadable, or without per-layer top-1)."""


def read_top1(path: str) -> dict[str, float]:
    """Top-1 (in %) of every probed layer of a linear_probe.py report, in the report's (network) order."""
    try:
        with open(path) as stream:
            layers = json.load(stream)["layers"]
        return {name: 100.0 * float(row["top1"]) for name, row in layers.items()}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ProbeReportError(f"{path} is not a linear_probe.py report ({type(error).__name__}: {error})") from None


def default_label(path: str) -> str:
    """The report's file name without its extension."""
    return os.path.splitext(os.path.basename(path))[0]


def draw(curves: dict[str, dict[str, float]], title: str) -> bytes:
    """The PNG of one line per curve (label -> {layer: top-1 %}), layers on x in first-seen order."""
    layers = list(dict.fromkeys(name for curve in curves.values() for name in curve))
    figure, axes = pyplot.subplots(figsize=(max(4.0, 1.1 * len(layers) + 2.0), 3.6), dpi=120)
    for label, curve in curves.items():
        points = [(layers.index(name), top1) for name, top1 in curve.items()]
        axes.plot(*zip(*points), marker="o", label=label)
    axes.set_xticks(range(len(layers)), layers, rotation=20, ha="right")
    axes.set_ylabel("linear probe top-1 (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    return buffer.getvalue()


def log_to_tensorboard(png: bytes, log_dir: str, tag: str = "probes/top1_per_layer") -> None:
    """Writes the picture as a TensorBoard image summary in `log_dir`."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        tf.summary.image(tag, tf.image.decode_png(png, channels=4)[None], step=0)
    writer.close()
