"""Hierarchical k-means over feature shards on several workers (METHOD.md, cycle steps 2-5, and
"Scale of the reference").

Each worker holds a contiguous shard of the rows (a memory-mapped cache). In
every Lloyd iteration each worker assigns its rows with faiss and accumulates
per-cluster sums and counts in float64; these are all-reduced, so all workers
hold the same centroids. Everything random or data-dependent (initial rows,
empty-cluster splits) is decided from reduced values and a shared seed, hence
identically everywhere. With one worker the collective is the identity and this
is plain Lloyd k-means. Both levels of the hierarchy use one code path: G groups
of c centroids, each row searched only among its group's centroids (level 1:
G = 1, c = m; level 2: G = m super-clusters, c = k/m).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator

import faiss
import numpy as np
from scipy import sparse

from keras_dc import clustering, distributed_pca
from keras_dc.clustering import HierarchicalResult, KMeansResult, grow_small_clusters, split_empty_clusters
from keras_dc.feature_cache import CHUNK_ELEMENTS, ShardedFeatures
from keras_dc.pca import PCA

LLOYD_SPLIT_EPS = 1.0 / 1024  # faiss's relative perturbation when an empty cluster is re-seeded mid-run
SEARCH_CHUNK_ELEMENTS = 2**26  # faiss searches large query blocks faster; 256 MB of float32 rows

Log = Callable[[str], None]


class _Subset:
    """The rows `rows` (global numbers) of sharded features, renumbered from 0: what
    split_empty_clusters needs to work inside one super-cluster."""

    def __init__(self, data: ShardedFeatures, rows: np.ndarray):
        self.data = data
        self.rows = rows

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), self.data.shape[1]

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        return self.data[self.rows[positions]]


def _indexes(centroids: np.ndarray) -> list[faiss.Index]:
    """One exact L2 index per group of centroids (G, c, d), on the GPUs when faiss sees any."""
    indexes = []
    for group in centroids:
        index = faiss.IndexFlatL2(group.shape[1])
        if clustering._resolve_gpu(None):
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(np.ascontiguousarray(group, dtype=np.float32))
        indexes.append(index)
    return indexes


class _Workspace:
    """Per-cluster float64 sums and counts, and the buffers that every pass of one k-means level
    reuses: fresh 100 MB arrays for each block would cost as much as the arithmetic on them."""

    def __init__(self, clusters: int, dim: int):
        self.sums = np.zeros((clusters, dim))
        self.counts = np.zeros(clusters)
        self._wide = np.empty((max(1, CHUNK_ELEMENTS // dim), dim))
        self._rows = np.empty((0, dim), dtype=np.float32)

    def gather(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """x[rows] in a reused float32 buffer (valid until the next call)."""
        if len(self._rows) < len(rows):
            self._rows = np.empty((len(rows), x.shape[1]), dtype=np.float32)
        return np.take(x, rows, axis=0, out=self._rows[:len(rows)], mode="clip")

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        """Adds each row of x to the sum of its cluster, in float64: a (clusters x rows) one-hot
        matrix, built directly in CSC form (one entry per column), times the widened rows."""
        for first in range(0, len(x), len(self._wide)):
            part, part_ids = x[first:first + len(self._wide)], ids[first:first + len(self._wide)]
            wide = self._wide[:len(part)]
            np.copyto(wide, part)
            one_hot = sparse.csc_matrix((np.ones(len(part)), part_ids, np.arange(len(part) + 1)),
                                        shape=(len(self.counts), len(part)))
            self.sums += one_hot @ wide
        self.counts += np.bincount(ids, minlength=len(self.counts))


def _search_blocks(data: ShardedFeatures, centroids: np.ndarray, groups: np.ndarray | None, work: _Workspace
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(local row numbers, float32 rows, flat cluster ids, squared distances) of blocks of this
    worker's rows, each searched among its group's centroids (groups: the group of each local
    row, None for one group); the flat id of centroid j of group g is g * per_group + j."""
    indexes, per_group = _indexes(centroids), centroids.shape[1]
    for first, x in data.chunks(SEARCH_CHUNK_ELEMENTS):
        if groups is None:
            distances, nearest = indexes[0].search(x, 1)
            yield np.arange(first, first + len(x)), x, nearest[:, 0], distances[:, 0]
            continue
        chunk_groups = groups[first:first + len(x)]
        order = np.argsort(chunk_groups, kind="stable")
        bounds = np.searchsorted(chunk_groups[order], np.arange(len(indexes) + 1))
        for group, index in enumerate(indexes):
            rows = order[bounds[group]:bounds[group + 1]]
            if len(rows):
                block = work.gather(x, rows)
                distances, nearest = index.search(block, 1)
                yield first + rows, block, nearest[:, 0] + group * per_group, distances[:, 0]


def _assign(data: ShardedFeatures, centroids: np.ndarray, groups: np.ndarray | None, work: _Workspace
            ) -> tuple[np.ndarray, float]:
    """The flat cluster ids of all workers' rows and the summed squared distances to the assigned
    centroids (the k-means objective)."""
    ids = np.empty(data.rows.shape[0], dtype=np.int64)
    objective = 0.0
    for rows, _, flat_ids, distances in _search_blocks(data, centroids, groups, work):
        ids[rows] = flat_ids
        objective += float(distances.sum(dtype=np.float64))
    return data.gather(ids), float(data.collective.all_reduce_sum(np.array([objective]))[0])


def _cluster_sums(data: ShardedFeatures, centroids: np.ndarray, groups: np.ndarray | None, work: _Workspace
                  ) -> tuple[np.ndarray, np.ndarray]:
    """All workers' per-cluster float64 sums of rows and counts under the nearest-centroid assignment."""
    clusters = len(work.counts)
    work.sums[:], work.counts[:] = 0.0, 0.0
    for _, x, flat_ids, _ in _search_blocks(data, centroids, groups, work):
        work.add(flat_ids, x)
    packed = data.collective.all_reduce_sum(np.concatenate([work.sums.ravel(), work.counts]))
    return packed[:-clusters].reshape(work.sums.shape), packed[-clusters:]


def _reseed_empty(centroids: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> None:
    """In place: each empty cluster takes a perturbed copy of a random donor's centroid (chosen
    proportionally to size among clusters of >= 2) and, for later draws, half its count."""
    for target in np.flatnonzero(counts == 0):
        sizes = np.where(counts >= 2, counts, 0)
        donor = rng.choice(len(counts), p=sizes / sizes.sum())
        centroids[target] = centroids[donor] * (1 + LLOYD_SPLIT_EPS)
        centroids[donor] = centroids[donor] * (1 - LLOYD_SPLIT_EPS)
        counts[target] = counts[donor] // 2
        counts[donor] -= counts[target]


def _lloyd(data: ShardedFeatures, centroids: np.ndarray, groups: np.ndarray | None, niter: int,
           rngs: list[np.random.Generator], work: _Workspace) -> np.ndarray:
    """niter Lloyd iterations (assign, then mean of the members) of every group at once."""
    num_groups, per_group, dim = centroids.shape
    for _ in range(niter):
        sums, counts = _cluster_sums(data, centroids, groups, work)
        flat = centroids.reshape(-1, dim).copy()
        filled = counts > 0
        flat[filled] = sums[filled] / counts[filled, None]
        centroids = flat.reshape(num_groups, per_group, dim)
        counts = counts.reshape(num_groups, per_group)
        for group in range(num_groups):
            _reseed_empty(centroids[group], counts[group], rngs[group])
    return centroids


def _mean_result(data: ShardedFeatures) -> KMeansResult:
    """k = 1: everything in cluster 0, whose centroid is the mean of all rows."""
    work = _Workspace(1, data.shape[1])
    sums, _ = _cluster_sums(data, np.zeros((1, 1, data.shape[1]), np.float32), None, work)
    centroids = (sums / data.total).astype(np.float32)
    assignments, objective = _assign(data, centroids[None], None, work)
    return KMeansResult(assignments, centroids, objective, 0)


def kmeans(data: ShardedFeatures, k: int, niter: int, seed: int, init: np.ndarray | None = None) -> KMeansResult:
    """Lloyd k-means over all workers' rows: niter iterations from k random rows (or `init`), a
    final assignment and the empty-cluster fix; every worker returns the same result. The
    objective is that of the final assignment (the fix changes it by ~1e-7 relative)."""
    if data.total < k:
        raise ValueError(f"k-means needs at least k={k} points, got {data.total}")
    if k == 1:
        return _mean_result(data)
    rng = np.random.default_rng(seed)
    if init is None:
        init = data[rng.choice(data.total, size=k, replace=False)]
    work = _Workspace(k, data.shape[1])
    centroids = _lloyd(data, np.asarray(init, np.float32)[None], None, niter, [rng], work)[0]
    nearest, objective = _assign(data, centroids[None], None, work)
    assignments, centroids, n_split = split_empty_clusters(data, nearest, centroids, rng)
    return KMeansResult(assignments, centroids, objective, n_split)


def _sub_kmeans(data: ShardedFeatures, super_ids: np.ndarray, k: int, m: int, niter: int, seed: int
                ) -> tuple[np.ndarray, float, int]:
    """Level 2, all super-clusters at once: super-cluster s gets k/m clusters seeded with
    seed + 1 + s; returns local sub ids, the objective and the number of empty clusters split."""
    per_super = k // m
    members = [np.flatnonzero(super_ids == s) for s in range(m)]
    for s, rows in enumerate(members):
        if len(rows) < per_super:
            raise ValueError(f"super-cluster {s} has {len(rows)} points, fewer than the k/m={per_super} "
                             f"sub-clusters it must hold; use a smaller k or m")
    rngs = [np.random.default_rng(seed + 1 + s) for s in range(m)]
    init_rows = np.concatenate([rng.choice(rows, size=per_super, replace=False) for rng, rows in zip(rngs, members)])
    local_groups = super_ids[data.start:data.stop]
    work = _Workspace(k, data.shape[1])
    centroids = _lloyd(data, data[init_rows].reshape(m, per_super, -1), local_groups, niter, rngs, work)
    flat_ids, objective = _assign(data, centroids, local_groups, work)
    sub_ids = np.zeros(data.total, dtype=np.int64)
    n_split = 0
    for s, rows in enumerate(members):
        sub_ids[rows], centroids[s], split = split_empty_clusters(
            _Subset(data, rows), flat_ids[rows] - s * per_super, centroids[s], rngs[s])
        n_split += split
    return sub_ids.astype(np.int32), objective, n_split


def hierarchical_kmeans(data: ShardedFeatures, k: int, m: int, niter: int, seed: int) -> HierarchicalResult:
    """k-means into m super-clusters on all rows, then into k/m sub-clusters inside each, as
    clustering.hierarchical_kmeans but over the workers' shards."""
    if m < 1 or k < m or k % m != 0:
        raise ValueError(f"k={k} must be a positive multiple of m={m}")
    if data.total < k:
        raise ValueError(f"{data.total} points cannot fill k={k} clusters; use a smaller k")
    top = kmeans(data, m, niter, seed)
    super_assignments, grown = grow_small_clusters(data, top.assignments, top.centroids, k // m)
    super_ids = super_assignments.astype(np.int32)
    sub_ids, objective, sub_split = _sub_kmeans(data, super_ids, k, m, niter, seed)
    return HierarchicalResult(super_ids=super_ids, sub_ids=sub_ids, objective=objective,
                              super_objective=top.objective, empty_split=top.empty_split + sub_split + grown,
                              k=k, m=m)


def assignments_checksum(super_ids: np.ndarray, sub_ids: np.ndarray) -> str:
    """sha256 hex of the assignments as little-endian int32 (super ids, then sub ids)."""
    digest = hashlib.sha256(np.asarray(super_ids, "<i4").tobytes())
    digest.update(np.asarray(sub_ids, "<i4").tobytes())
    return digest.hexdigest()


def cluster_features(features: ShardedFeatures, k: int, m: int, pca_dim: int, niter: int, seed: int,
                     reduced_path: str, pca_sample: int | None = None, dtype: str = "float32",
                     log: Log | None = None) -> tuple[HierarchicalResult, PCA, dict[str, float]]:
    """The clustering step over shards, as clustering.cluster_features: PCA (whitening 0.5) from
    all-reduced moments, L2 normalisation into a cache at reduced_path (removed afterwards),
    hierarchical k-means; logs the assignments checksum and returns stage timings."""
    log = log or (lambda line: None)
    start = time.perf_counter()
    pca = distributed_pca.fit_pca(features, pca_dim, 0.5, pca_sample, seed)
    reduced = distributed_pca.project_to_cache(features, pca, reduced_path, dtype)
    pca_s = time.perf_counter() - start
    log(f"clustering: PCA {features.shape[1]}->{reduced.shape[1]} on {features.total} images "
        f"({features.collective.workers} workers) in {pca_s:.2f} s")
    try:
        result = hierarchical_kmeans(reduced, k, m, niter, seed)
    finally:
        os.remove(reduced_path)
    kmeans_s = time.perf_counter() - start - pca_s
    log(f"clustering: k-means k={k} m={m} on {features.total} images in {kmeans_s:.2f} s "
        f"(objective {result.objective:.4g}, {result.empty_split} empty clusters split)")
    log(f"assignments checksum: {assignments_checksum(result.super_ids, result.sub_ids)}")
    return result, pca, {"pca_s": pca_s, "kmeans_s": kmeans_s, "total_s": pca_s + kmeans_s}
