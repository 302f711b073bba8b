"""Hierarchical k-means with faiss and the empty-cluster fix (METHOD.md, cycle steps 2-5)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from keras_dc.pca import PCA, fit_pca

SPLIT_EPS = 1e-7
FAISS_MIN_POINTS_PER_CENTROID = 39
_NEVER_SUBSAMPLE = 10**9
_OBJECTIVE_BATCH = 65536

Log = Callable[[str], None]


@dataclass
class KMeansResult:
    """Outcome of one flat k-means: final assignment, centroids, objective and the
    number of empty clusters that had to be split."""

    assignments: np.ndarray
    centroids: np.ndarray
    objective: float
    empty_split: int


@dataclass
class HierarchicalResult:
    """Two-level clustering: super-cluster ids in [0, m) and sub-cluster ids local to
    their super-cluster in [0, k/m)."""

    super_ids: np.ndarray
    sub_ids: np.ndarray
    objective: float
    super_objective: float
    empty_split: int
    k: int
    m: int

    @property
    def cluster_ids(self) -> np.ndarray:
        """Global cluster id in [0, k): super_id * (k/m) + sub_id."""
        return self.super_ids.astype(np.int64) * (self.k // self.m) + self.sub_ids


def _resolve_gpu(use_gpu: bool | None) -> bool:
    """None means: use the GPU when this faiss build has GPU support and sees a GPU."""
    if use_gpu is not None:
        return bool(use_gpu)
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def _objective(x: np.ndarray, assignments: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared distances of the rows of x to their assigned centroid."""
    total = 0.0
    for start in range(0, x.shape[0], _OBJECTIVE_BATCH):
        stop = start + _OBJECTIVE_BATCH
        diff = x[start:stop].astype(np.float64) - centroids[assignments[start:stop]]
        total += float(np.einsum("ij,ij->", diff, diff))
    return total


def _split_donor(
    x: np.ndarray, members: np.ndarray, centroid: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The half (floor) of a donor's members that are closest to centroid*(1+eps)
    relative to centroid*(1-eps); ties, e.g. identical points, are broken at random."""
    members = rng.permutation(members)
    c = centroid.astype(np.float64)
    points = x[members].astype(np.float64)
    to_new = np.sum((points - c * (1 + SPLIT_EPS)) ** 2, axis=1)
    to_donor = np.sum((points - c * (1 - SPLIT_EPS)) ** 2, axis=1)
    order = np.argsort(to_new - to_donor, kind="stable")
    return members[order[: len(members) // 2]]


def split_empty_clusters(
    x: np.ndarray, assignments: np.ndarray, centroids: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """Give every empty cluster half the members and a perturbed copy of the centroid of
    a random donor cluster (chosen proportionally to its size among clusters of >= 2)."""
    k = centroids.shape[0]
    if k > x.shape[0]:
        raise ValueError(f"cannot fill {k} clusters with only {x.shape[0]} points")
    assignments = np.array(assignments, dtype=np.int64)
    centroids = np.array(centroids, dtype=np.float32)
    counts = np.bincount(assignments, minlength=k)
    empty = np.flatnonzero(counts == 0)
    for target in empty:
        sizes = np.where(counts >= 2, counts, 0).astype(np.float64)
        donor = rng.choice(k, p=sizes / sizes.sum())
        moved = _split_donor(x, np.flatnonzero(assignments == donor), centroids[donor], rng)
        centroids[target] = centroids[donor] * (1 + SPLIT_EPS)
        centroids[donor] = centroids[donor] * (1 - SPLIT_EPS)
        assignments[moved] = target
        counts[target] = len(moved)
        counts[donor] -= len(moved)
    return assignments, centroids, len(empty)


def kmeans(
    x: np.ndarray, k: int, niter: int, seed: int, use_gpu: bool | None = None
) -> KMeansResult:
    """Lloyd k-means with faiss (centroids initialised from random points), then a full
    nearest-centroid assignment and the empty-cluster fix."""
    n, d = x.shape
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if k == 1:
        assignments = np.zeros(n, dtype=np.int64)
        centroids = x.mean(axis=0, dtype=np.float64)[None].astype(np.float32)
        return KMeansResult(assignments, centroids, _objective(x, assignments, centroids), 0)
    km = faiss.Kmeans(
        d, k, niter=niter, seed=int(seed), gpu=_resolve_gpu(use_gpu), spherical=False,
        verbose=False, min_points_per_centroid=1, max_points_per_centroid=_NEVER_SUBSAMPLE,
    )
    km.train(x)
    _, nearest = km.assign(x)
    assignments, centroids, n_split = split_empty_clusters(
        x, nearest.astype(np.int64), km.centroids, np.random.default_rng(seed)
    )
    return KMeansResult(assignments, centroids, _objective(x, assignments, centroids), n_split)


def warn_small_clusters(n: int, k: int, m: int) -> list[str]:
    """Warnings for non-trivial levels with fewer than 39 images per centroid on average
    (faiss's own threshold), where k-means becomes unreliable."""
    warnings = []
    levels = [("super-clusters", m, m > 1), ("sub-clusters", k, k > m)]
    for name, centroids, active in levels:
        if active and n / centroids < FAISS_MIN_POINTS_PER_CENTROID:
            warnings.append(
                f"clustering: {name}: {n} images for {centroids} centroids "
                f"({n / centroids:.1f} per centroid) is fewer than "
                f"{FAISS_MIN_POINTS_PER_CENTROID} images per centroid"
            )
    return warnings


def grow_small_clusters(
    x: np.ndarray, assignments: np.ndarray, centroids: np.ndarray, min_size: int
) -> tuple[np.ndarray, int]:
    """Moves to each cluster smaller than min_size the members of the largest cluster
    closest to its centroid, so every super-cluster can hold its k/m sub-clusters."""
    k = centroids.shape[0]
    if k * min_size > x.shape[0]:
        raise ValueError(f"{x.shape[0]} points cannot give {k} clusters {min_size} members each")
    assignments = np.array(assignments, dtype=np.int64)
    counts = np.bincount(assignments, minlength=k)
    grown = 0
    for target in np.flatnonzero(counts < min_size):
        grown += 1
        while counts[target] < min_size:
            donor = int(np.argmax(counts))
            members = np.flatnonzero(assignments == donor)
            distances = np.sum((x[members] - centroids[target]) ** 2, axis=1)
            take = min(min_size - counts[target], counts[donor] - min_size)
            moved = members[np.argsort(distances, kind="stable")[:take]]
            assignments[moved] = target
            counts[target] += take
            counts[donor] -= take
    return assignments, grown


def _sub_kmeans(
    x: np.ndarray, super_ids: np.ndarray, k: int, m: int, niter: int, seed: int,
    use_gpu: bool | None,
) -> tuple[np.ndarray, float, int]:
    """Level 2: split each super-cluster s into k/m clusters with seed + 1 + s; returns
    local sub ids, the summed objective and the number of empty clusters split."""
    per_super = k // m
    sub_ids = np.zeros(x.shape[0], dtype=np.int32)
    objective, n_split = 0.0, 0
    for s in range(m):
        rows = np.flatnonzero(super_ids == s)
        if len(rows) < per_super:
            raise ValueError(
                f"super-cluster {s} has {len(rows)} points, fewer than the k/m={per_super} "
                f"sub-clusters it must hold; use a smaller k or m"
            )
        result = kmeans(x[rows], per_super, niter, seed + 1 + s, use_gpu)
        sub_ids[rows] = result.assignments
        objective += result.objective
        n_split += result.empty_split
    return sub_ids, objective, n_split


def hierarchical_kmeans(
    x: np.ndarray, k: int, m: int, niter: int, seed: int,
    use_gpu: bool | None = None,
) -> HierarchicalResult:
    """k-means into m super-clusters on all rows, then into k/m sub-clusters inside each
    super-cluster (m == 1 and k == m make a level trivial)."""
    if m < 1 or k < m or k % m != 0:
        raise ValueError(f"k={k} must be a positive multiple of m={m}")
    if x.shape[0] < k:
        raise ValueError(f"{x.shape[0]} points cannot fill k={k} clusters; use a smaller k")
    top = kmeans(x, m, niter, seed, use_gpu)
    super_assignments, grown = grow_small_clusters(x, top.assignments, top.centroids, k // m)
    super_ids = super_assignments.astype(np.int32)
    sub_ids, objective, sub_split = _sub_kmeans(x, super_ids, k, m, niter, seed, use_gpu)
    return HierarchicalResult(
        super_ids=super_ids, sub_ids=sub_ids, objective=objective,
        super_objective=top.objective, empty_split=top.empty_split + sub_split + grown, k=k, m=m,
    )


def cluster_features(
    features: np.ndarray, k: int, m: int, pca_dim: int, niter: int, seed: int,
    pca_sample: int | None = None, use_gpu: bool | None = None, log: Log | None = None,
) -> tuple[HierarchicalResult, PCA, dict[str, float]]:
    """The full clustering step: PCA with whitening power 0.5, L2 normalisation, then
    hierarchical k-means; also returns stage timings in seconds."""
    start = time.perf_counter()
    pca = fit_pca(features, pca_dim, whitening_power=0.5, sample_size=pca_sample, seed=seed)
    reduced = pca.reduce(features)
    pca_s = time.perf_counter() - start
    if log:
        log(f"clustering: PCA {features.shape[1]}->{reduced.shape[1]} on "
            f"{features.shape[0]} images in {pca_s:.2f} s")
    result = hierarchical_kmeans(reduced, k, m, niter, seed, use_gpu)
    total_s = time.perf_counter() - start
    kmeans_s = total_s - pca_s
    if log:
        log(f"clustering: k-means k={k} m={m} on {features.shape[0]} images in "
            f"{kmeans_s:.2f} s (objective {result.objective:.4g}, "
            f"{result.empty_split} empty clusters split)")
    return result, pca, {"pca_s": pca_s, "kmeans_s": kmeans_s, "total_s": total_s}
