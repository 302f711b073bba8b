"""What a clustering follows: NMI of its clusters with the labels and with simple image statistics.

On photographs, k-means on a network's features can group images by mean colour or brightness
instead of by content (DeepCluster's reason for the Sobel input). Each statistic is cut into a few
codes per image: mean colour (k-means of the mean RGB), brightness and edge energy (quantile bins),
and where the edge energy lies (the cell of a 3 x 3 grid holding its centre of mass). A clustering
whose NMI with a statistic is above its NMI with the labels follows that statistic more than the classes.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

STATISTICS = ("mean_colour", "brightness", "edge_energy", "edge_centre")
GRID = 3  # the edge centre's grid is GRID x GRID cells


def raw_statistics(views: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image values of a batch of (N, H, W, 3) views: mean RGB (N, 3), brightness, edge energy
    (mean gradient magnitude of the grey image) and the edge energy's centre of mass (N, 2, in [0, 1))."""
    views = np.asarray(views, np.float64)
    grey = views.mean(axis=-1)
    rows, columns = np.gradient(grey, axis=(1, 2))
    energy = np.hypot(rows, columns)
    height, width = grey.shape[1:]
    total = energy.sum(axis=(1, 2)) + 1e-12
    centre = np.stack([(energy.sum(axis=2) * (np.arange(height) + 0.5)).sum(axis=1) / (total * height),
                       (energy.sum(axis=1) * (np.arange(width) + 0.5)).sum(axis=1) / (total * width)], axis=1)
    return {"mean_colour": views.mean(axis=(1, 2)), "brightness": grey.mean(axis=(1, 2)),
            "edge_energy": energy.mean(axis=(1, 2)), "edge_centre": centre}


def quantile_codes(values: np.ndarray, bins: int) -> np.ndarray:
    """Codes 0..bins-1 of equally filled bins of `values` (ties may leave some bins empty)."""
    edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, values, side="right")


def statistic_codes(raw: dict[str, np.ndarray], bins: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Each statistic of `raw_statistics` (concatenated over the images) as one code per image."""
    colours = raw["mean_colour"]
    centre_cells = np.minimum((raw["edge_centre"] * GRID).astype(int), GRID - 1)
    return {"mean_colour": KMeans(min(bins, len(colours)), n_init=3, random_state=seed).fit_predict(colours),
            "brightness": quantile_codes(raw["brightness"], bins),
            "edge_energy": quantile_codes(raw["edge_energy"], bins),
            "edge_centre": centre_cells[:, 0] * GRID + centre_cells[:, 1]}


def nmi_with(cluster_ids: np.ndarray, codes: dict[str, np.ndarray], labels: np.ndarray | None = None) -> dict:
    """NMI of the clusters with the labels (when given) and with each statistic's codes."""
    targets = ({"labels": labels} if labels is not None else {}) | codes
    return {name: float(normalized_mutual_info_score(values, cluster_ids)) for name, values in targets.items()}


def cluster_sizes(cluster_ids: np.ndarray) -> dict:
    """Number, smallest, median and largest size of the non-empty clusters."""
    _, sizes = np.unique(cluster_ids, return_counts=True)
    return {"clusters": int(len(sizes)), "min": int(sizes.min()), "median": float(np.median(sizes)),
            "max": int(sizes.max())}
