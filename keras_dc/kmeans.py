"""Hierarchical k-means over feature shards, the one k-means of keras-dc (docs/method.md, cycle steps 2-5,
and "Scale of the reference"): training, evaluation and the benchmarks all cluster with it.

Each worker holds a contiguous shard of the rows (a memory-mapped cache). In
every Lloyd iteration each worker assigns its rows with faiss and accumulates, in
float64, the change of the per-cluster sums and counts from the rows that moved;
these are all-reduced, so all workers hold the same sums and centroids.
Everything random or data-dependent (initial rows, empty-cluster splits) is
decided from reduced values and a shared seed, hence identically everywhere. With
one worker the collective is the identity and this is plain Lloyd k-means. Both
levels of the hierarchy use one code path: G groups of c centroids, each row
searched only among its group's centroids (level 1: G = 1, c = m; level 2:
G = m super-clusters, c = k/m, on a copy of the rows sorted by group).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator

import faiss
import numpy as np
from scipy import sparse

from keras_dc import distributed_pca, hierarchy, progress
from keras_dc.distribute import Collective
from keras_dc.feature_cache import CacheWriter, ShardedFeatures
from keras_dc.pca import PCA

LLOYD_SPLIT_EPS = 1.0 / 1024  # faiss's relative perturbation when an empty cluster is re-seeded mid-run
SEARCH_CHUNK_ELEMENTS = 2**26  # faiss searches large query blocks faster; 256 MB of float32 rows
SUM_BLOCK_ELEMENTS = 2**19  # rows widened to float64 per block: 4 MB stays in cache, 25% faster than 64 MB
SPLIT_EPS = 1e-7  # relative perturbation of the centroids when an empty cluster is filled after the last pass
FAISS_MIN_POINTS_PER_CENTROID = 39

Log = Callable[[str], None]


@dataclasses.dataclass
class KMeansResult:
    """Outcome of one flat k-means: final assignment, centroids, objective and the
    number of empty clusters that had to be split."""

    assignments: np.ndarray
    centroids: np.ndarray
    objective: float
    empty_split: int


@dataclasses.dataclass
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
        """Global cluster id in [0, k) of each row."""
        return hierarchy.global_cluster_ids(self.super_ids.astype(np.int64), self.sub_ids,
                                            hierarchy.sub_classes(self.k, self.m))


def uses_gpu() -> bool:
    """Whether this faiss build has GPU support and sees a GPU."""
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def _split_donor(x, members: np.ndarray, centroid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The half (floor) of a donor's members that are closest to centroid*(1+eps)
    relative to centroid*(1-eps); ties, e.g. identical points, are broken at random."""
    members = rng.permutation(members)
    c = centroid.astype(np.float64)
    points = x[members].astype(np.float64)
    to_new = np.sum((points - c * (1 + SPLIT_EPS)) ** 2, axis=1)
    to_donor = np.sum((points - c * (1 - SPLIT_EPS)) ** 2, axis=1)
    order = np.argsort(to_new - to_donor, kind="stable")
    return members[order[: len(members) // 2]]


def split_empty_clusters(x, assignments: np.ndarray, centroids: np.ndarray, rng: np.random.Generator
                         ) -> tuple[np.ndarray, np.ndarray, int]:
    """Give every empty cluster half the members and a perturbed copy of the centroid of
    a random donor cluster (chosen proportionally to its size among clusters of >= 2).
    x is an array or ShardedFeatures (rows gathered from the workers that hold them)."""
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


def grow_small_clusters(x, assignments: np.ndarray, centroids: np.ndarray, min_size: int
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
        if uses_gpu():
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(np.ascontiguousarray(group, dtype=np.float32))
        indexes.append(index)
    return indexes


class _Workspace:
    """What one k-means level carries from pass to pass: each stored row's cluster in the last
    pass, all workers' float64 per-cluster sums and counts under it, and a reused buffer. A pass
    adds only the rows that changed cluster (after a few Lloyd iterations, a few percent), so the
    sums cost a fraction of a pass over all rows."""

    def __init__(self, clusters: int, dim: int, local_rows: int):
        self.sums = np.zeros((clusters, dim))
        self.counts = np.zeros(clusters)
        self.assigned = np.full(local_rows, -1, dtype=np.int64)
        self._delta_sums = np.zeros((clusters, dim))
        self._delta_counts = np.zeros(clusters)
        self._wide = np.empty((max(1, SUM_BLOCK_ELEMENTS // dim), dim))

    def move(self, rows: np.ndarray, x: np.ndarray, ids: np.ndarray) -> None:
        """Records that stored rows `rows` (values x) are now in clusters `ids`: the rows that
        changed cluster leave their old sum and join the new one, in this pass's deltas."""
        previous = self.assigned[rows]
        moved = np.flatnonzero(previous != ids)
        if len(moved) == 0:
            return
        self.assigned[rows[moved]] = ids[moved]
        values = x if len(moved) == len(ids) else x[moved]
        self._scatter(ids[moved], values, 1.0)
        left = previous[moved] >= 0
        self._scatter(previous[moved][left], values[left], -1.0)

    def _scatter(self, ids: np.ndarray, x: np.ndarray, sign: float) -> None:
        """Adds sign * each row of x to its cluster's delta, in float64: a (clusters x rows)
        one-hot matrix, built directly in CSC form (one entry per column), times widened rows."""
        for first in range(0, len(x), len(self._wide)):
            part, part_ids = x[first:first + len(self._wide)], ids[first:first + len(self._wide)]
            wide = self._wide[:len(part)]
            np.copyto(wide, part)
            one_hot = sparse.csc_matrix((np.full(len(part), sign), part_ids, np.arange(len(part) + 1)),
                                        shape=(len(self.counts), len(part)))
            self._delta_sums += one_hot @ wide
        self._delta_counts += sign * np.bincount(ids, minlength=len(self.counts))

    def commit(self, collective) -> None:
        """Adds all workers' deltas of this pass to the sums and counts (identical everywhere)."""
        clusters = len(self.counts)
        packed = collective.all_reduce_sum(np.concatenate([self._delta_sums.ravel(), self._delta_counts]))
        self.sums += packed[:-clusters].reshape(self.sums.shape)
        self.counts += packed[-clusters:]
        self._delta_sums[:], self._delta_counts[:] = 0.0, 0.0


def _search_blocks(data: ShardedFeatures, centroids: np.ndarray, bounds: dict[int, np.ndarray] | None
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(stored row positions, float32 rows, flat cluster ids, squared distances) of blocks of this
    worker's rows, each searched among its group's centroids. Rows are stored group by group
    inside each search chunk, bounds[first row of chunk] giving the groups' limits (None: one
    group); the flat id of centroid j of group g is g * per_group + j."""
    indexes, per_group = _indexes(centroids), centroids.shape[1]
    for first, x in data.chunks(SEARCH_CHUNK_ELEMENTS):
        limits = bounds[first] if bounds is not None else (0, len(x))
        for group, index in enumerate(indexes):
            low, high = limits[group], limits[group + 1]
            if high > low:
                distances, nearest = index.search(x[low:high], 1)
                flat_ids = hierarchy.global_cluster_ids(group, nearest[:, 0], per_group)
                yield np.arange(first + low, first + high), x[low:high], flat_ids, distances[:, 0]


def _assign(data: ShardedFeatures, centroids: np.ndarray, bounds: dict[int, np.ndarray] | None,
            order: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """The flat cluster ids of all workers' rows and the summed squared distances to the assigned
    centroids (the k-means objective); order[p] is the local row stored at position p (None: the
    rows are stored in order)."""
    ids = np.empty(data.rows.shape[0], dtype=np.int64)
    objective = 0.0
    for positions, _, flat_ids, distances in _search_blocks(data, centroids, bounds):
        ids[positions if order is None else order[positions]] = flat_ids
        objective += float(distances.sum(dtype=np.float64))
    return data.gather(ids), float(data.collective.all_reduce_sum(np.array([objective]))[0])


def _cluster_sums(data: ShardedFeatures, centroids: np.ndarray, bounds: dict[int, np.ndarray] | None,
                  work: _Workspace) -> tuple[np.ndarray, np.ndarray]:
    """All workers' per-cluster float64 sums of rows and counts under the nearest-centroid
    assignment (the workspace's, updated by this pass; copies)."""
    for positions, x, flat_ids, _ in _search_blocks(data, centroids, bounds):
        work.move(positions, x, flat_ids)
    work.commit(data.collective)
    return work.sums.copy(), work.counts.copy()


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


def _lloyd(data: ShardedFeatures, centroids: np.ndarray, bounds: dict[int, np.ndarray] | None, niter: int,
           rngs: list[np.random.Generator], work: _Workspace) -> np.ndarray:
    """niter Lloyd iterations (assign, then mean of the members) of every group at once."""
    num_groups, per_group, dim = centroids.shape
    level = f"{per_group} clusters" if num_groups == 1 else f"{num_groups} x {per_group} sub-clusters"
    stage = progress.Stage(f"clustering: k-means into {level}", niter, "iteration")
    for iteration in range(niter):
        sums, counts = _cluster_sums(data, centroids, bounds, work)
        flat = centroids.reshape(-1, dim).copy()
        filled = counts > 0
        flat[filled] = sums[filled] / counts[filled, None]
        centroids = flat.reshape(num_groups, per_group, dim)
        counts = counts.reshape(num_groups, per_group)
        for group in range(num_groups):
            _reseed_empty(centroids[group], counts[group], rngs[group])
        stage.update(iteration + 1)
    return centroids


def _mean_result(data: ShardedFeatures) -> KMeansResult:
    """k = 1: everything in cluster 0, whose centroid is the mean of all rows."""
    work = _Workspace(1, data.shape[1], data.rows.shape[0])
    sums, _ = _cluster_sums(data, np.zeros((1, 1, data.shape[1]), np.float32), None, work)
    centroids = (sums / data.total).astype(np.float32)
    assignments, objective = _assign(data, centroids[None], None)
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
    work = _Workspace(k, data.shape[1], data.rows.shape[0])
    centroids = _lloyd(data, np.asarray(init, np.float32)[None], None, niter, [rng], work)[0]
    nearest, objective = _assign(data, centroids[None], None)
    assignments, centroids, n_split = split_empty_clusters(data, nearest, centroids, rng)
    return KMeansResult(assignments, centroids, objective, n_split)


@contextlib.contextmanager
def _grouped_copy(data: ShardedFeatures, groups: np.ndarray, num_groups: int, path: str
                  ) -> Iterator[tuple[ShardedFeatures, np.ndarray, dict[int, np.ndarray]]]:
    """A scratch copy of this worker's rows at `path` (removed afterwards), each search chunk's
    rows sorted by group, so that every pass searches contiguous blocks instead of gathering a
    copy of each group; yields the copy, the local row stored at each position and each chunk's
    group bounds (by the chunk's first row)."""
    order = np.empty(data.rows.shape[0], dtype=np.int64)
    bounds = {}
    with CacheWriter(path, *data.rows.shape, "float16" if data.rows.dtype == np.float16 else "float32") as writer:
        for first, x in data.chunks(SEARCH_CHUNK_ELEMENTS):
            chunk_order = np.argsort(groups[first:first + len(x)], kind="stable")
            writer.write(x[chunk_order])
            order[first:first + len(x)] = first + chunk_order
            bounds[first] = np.searchsorted(groups[first + chunk_order], np.arange(num_groups + 1))
        cache = writer.finish()
    try:
        yield ShardedFeatures(cache.array, data.start, data.total, data.collective, data.chunk_rows), order, bounds
    finally:
        cache.remove()


def _sub_kmeans(data: ShardedFeatures, super_ids: np.ndarray, k: int, m: int, niter: int, seed: int,
                grouped_path: str) -> tuple[np.ndarray, float, int]:
    """Level 2, all super-clusters at once: super-cluster s gets k/m clusters seeded with
    seed + 1 + s; returns local sub ids, the objective and the number of empty clusters split."""
    per_super = hierarchy.sub_classes(k, m)
    members = [np.flatnonzero(super_ids == s) for s in range(m)]
    for s, rows in enumerate(members):
        if len(rows) < per_super:
            raise ValueError(f"super-cluster {s} has {len(rows)} points, fewer than the k/m={per_super} "
                             f"sub-clusters it must hold; use a smaller k or m")
    rngs = [np.random.default_rng(seed + 1 + s) for s in range(m)]
    init_rows = np.concatenate([rng.choice(rows, size=per_super, replace=False) for rng, rows in zip(rngs, members)])
    init = data[init_rows].reshape(m, per_super, -1)
    with _grouped_copy(data, super_ids[data.start:data.stop], m, grouped_path) as (grouped, order, bounds):
        work = _Workspace(k, data.shape[1], data.rows.shape[0])
        centroids = _lloyd(grouped, init, bounds, niter, rngs, work)
        flat_ids, objective = _assign(grouped, centroids, bounds, order)
    sub_ids = np.zeros(data.total, dtype=np.int64)
    n_split = 0
    for s, rows in enumerate(members):
        sub_ids[rows], centroids[s], split = split_empty_clusters(
            _Subset(data, rows), hierarchy.local_sub_ids(flat_ids[rows], s, per_super), centroids[s], rngs[s])
        n_split += split
    return sub_ids.astype(np.int32), objective, n_split


def hierarchical_kmeans(data: ShardedFeatures, k: int, m: int, niter: int, seed: int,
                        grouped_path: str | None = None) -> HierarchicalResult:
    """k-means into m super-clusters on all rows, then into k/m sub-clusters inside each (m == 1
    and k == m make a level trivial). Level 2 works on a copy of this worker's rows grouped by
    super-cluster, at grouped_path (None: in a temporary folder)."""
    per_super = hierarchy.sub_classes(k, m)
    if data.total < k:
        raise ValueError(f"{data.total} points cannot fill k={k} clusters; use a smaller k")
    top = kmeans(data, m, niter, seed)
    super_assignments, grown = grow_small_clusters(data, top.assignments, top.centroids, per_super)
    super_ids = super_assignments.astype(np.int32)
    with contextlib.ExitStack() as stack:
        if grouped_path is None:
            grouped_path = os.path.join(stack.enter_context(tempfile.TemporaryDirectory()), "grouped.npy")
        sub_ids, objective, sub_split = _sub_kmeans(data, super_ids, k, m, niter, seed, grouped_path)
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
    """The clustering step over shards: PCA (whitening 0.5) from
    all-reduced moments, L2 normalisation into a cache at reduced_path (removed afterwards, as
    the copy grouped by super-cluster next to it), hierarchical k-means; returns stage timings. On
    several workers it logs the assignments checksum, which must be the same on all of them."""
    log = log or (lambda line: None)
    start = time.perf_counter()
    pca = distributed_pca.fit_pca(features, pca_dim, 0.5, pca_sample, seed)
    reduced = distributed_pca.project_to_cache(features, pca, reduced_path, dtype)
    pca_s = time.perf_counter() - start
    try:
        result = hierarchical_kmeans(reduced, k, m, niter, seed, os.path.splitext(reduced_path)[0] + "_grouped.npy")
    finally:
        os.remove(reduced_path)
    kmeans_s = time.perf_counter() - start - pca_s
    if features.collective.workers > 1:
        log(f"assignments checksum: {assignments_checksum(result.super_ids, result.sub_ids)}")
    return result, pca, {"pca_s": pca_s, "kmeans_s": kmeans_s, "total_s": pca_s + kmeans_s}


def cluster_array(features: np.ndarray, k: int, m: int, pca_dim: int, niter: int, seed: int
                  ) -> tuple[HierarchicalResult, PCA, dict[str, float]]:
    """cluster_features on features held in memory by one process, the reduced rows cached in a
    temporary folder: how evaluation and the benchmarks cluster as training does."""
    with tempfile.TemporaryDirectory() as folder:
        data = ShardedFeatures(np.asarray(features, np.float32), 0, len(features), Collective())
        return cluster_features(data, k, m, pca_dim, niter, seed, os.path.join(folder, "reduced.npy"))
