"""Top-1 per probed layer for several linear-probe reports in one figure, as the paper plots it, and
the same numbers as a table.

Reads the JSON of tools/linear_probe.py (`{"layers": {name: {"top1", ...}}, "knn": ..., "clusters":
...}`). A network probed several times (seeds of the held-out split) is one line: the mean over its
reports, with the standard deviation as error bars and in the table.
"""

from __future__ import annotations

import io
import json
import os

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
from matplotlib import pyplot  # noqa: E402


class ProbeReportError(ValueError):
    """A file is not a linear-probe report (unreadable, or without per-layer top-1)."""


KNN = "k-NN top-1"
NMI = "k-means NMI vs labels"


def read_scores(path: str) -> dict[str, float]:
    """A report's top-1 (in %) of every probed layer in network order, then its k-NN top-1 (%) and the
    NMI of its k-means with the labels, where it has them."""
    try:
        with open(path) as stream:
            report = json.load(stream)
        scores = {name: 100.0 * float(row["top1"]) for name, row in report["layers"].items()}
        if "top1" in report.get("knn", {}):
            scores[KNN] = 100.0 * float(report["knn"]["top1"])
        if "kmeans" in report.get("clusters", {}):
            scores[NMI] = float(report["clusters"]["kmeans"]["nmi"])
        return scores
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ProbeReportError(f"{path} is not a linear_probe.py report ({type(error).__name__}: {error})") from None


def summarize(paths: list[str]) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation (n - 1 in the denominator; 0 for one report) of each score over the
    reports of one network, e.g. its probes on several held-out splits."""
    rows = [read_scores(path) for path in paths]
    if any(list(row) != list(rows[0]) for row in rows):
        raise ProbeReportError(f"{', '.join(paths)} do not report the same layers and scores")
    columns = {name: np.array([row[name] for row in rows]) for name in rows[0]}
    return {name: (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
            for name, values in columns.items()}


def layer_curves(summaries: dict[str, dict[str, tuple[float, float]]]
                 ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """What draw() plots of summaries (label -> summarize()): the per-layer means and deviations."""
    layers = {label: {name: score for name, score in summary.items() if name not in (KNN, NMI)}
              for label, summary in summaries.items()}
    return ({label: {name: mean for name, (mean, _) in scores.items()} for label, scores in layers.items()},
            {label: {name: deviation for name, (_, deviation) in scores.items()} for label, scores in layers.items()})


def markdown_table(summaries: dict[str, dict[str, tuple[float, float]]], counts: dict[str, int]) -> str:
    """One row per network (label -> summarize()), "mean ± sd" where it has several reports; a column for
    every score any network has, "-" where one lacks it."""
    columns = list(dict.fromkeys(name for summary in summaries.values() for name in summary))
    lines = ["| network | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, summary in summaries.items():
        cells = [_cell(summary.get(name), 3 if name == NMI else 1, counts[label]) for name in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(score: tuple[float, float] | None, decimals: int, count: int) -> str:
    if score is None:
        return "-"
    mean, deviation = score
    return f"{mean:.{decimals}f}" + (f" ± {deviation:.{decimals}f}" if count > 1 else "")


def default_label(path: str) -> str:
    """The report's file name without its extension."""
    return os.path.splitext(os.path.basename(path))[0]


def draw(curves: dict[str, dict[str, float]], title: str,
         errors: dict[str, dict[str, float]] | None = None) -> bytes:
    """The PNG of one line per curve (label -> {layer: top-1 %}), layers on x in first-seen order, with
    error bars where `errors` (label -> {layer: sd}) has them."""
    layers = list(dict.fromkeys(name for curve in curves.values() for name in curve))
    width = max(4.0, 1.1 * len(layers) + 2.0) + 0.07 * max(map(len, curves)) + 0.8  # the legend on the right
    figure, axes = pyplot.subplots(figsize=(max(width, 0.1 * len(title)), 3.6), dpi=120)
    for label, curve in curves.items():
        spread = (errors or {}).get(label, {})
        axes.errorbar([layers.index(name) for name in curve], list(curve.values()),
                      yerr=[spread.get(name, 0.0) for name in curve], marker="o", capsize=3, label=label)
    axes.set_xticks(range(len(layers)), layers, rotation=20, ha="right")
    axes.set_ylabel("linear probe top-1 (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
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
