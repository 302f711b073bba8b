"""Distributed PCA and hierarchical k-means: against faiss, against one process, and across shardings.

Several workers are simulated in one process by threads whose collective sums
through a barrier (a test double; the real collective is TF's, covered by
test_multi_worker.py). Every worker must end with the single-process result.
"""

import threading

import faiss
import numpy as np
import pytest

from keras_dc import distributed_kmeans, distributed_pca, pca as pca_lib
from keras_dc.distribute import Collective
from keras_dc.feature_cache import ShardedFeatures, shard_bounds


class ThreadCollective(Collective):
    """Sums arrays over `workers` threads in worker order (deterministic); broadcast is inherited."""

    def __init__(self, worker, workers, slots, barrier):
        self.worker, self.workers = worker, workers
        self._slots, self._barrier = slots, barrier

    def all_reduce_sum(self, array):
        array = np.asarray(array)
        self._slots[self.worker] = array.astype(np.float64 if array.dtype.kind == "f" else np.int64)
        self._barrier.wait()
        total = sum(self._slots[1:], self._slots[0])
        self._barrier.wait()
        return total


def run_workers(workers, x, fn, chunk_rows=1000):
    """fn(ShardedFeatures of worker w) on `workers` threads, each holding a contiguous shard of x."""
    slots, barrier = [None] * workers, threading.Barrier(workers, timeout=60)
    results, errors = [None] * workers, []

    def work(worker):
        start, stop = shard_bounds(len(x), worker, workers)
        data = ShardedFeatures(x[start:stop], start, len(x), ThreadCollective(worker, workers, slots, barrier),
                               chunk_rows)
        try:
            results[worker] = fn(data)
        except BaseException as error:  # noqa: BLE001  (re-raised in the main thread)
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def blobs(n=3000, d=16, centres=24, seed=0):
    """L2-normalised points around `centres` random centres, and each point's centre."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, d)).astype(np.float32) * 3
    labels = rng.integers(0, centres, n)
    x = means[labels] + rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def test_kmeans_matches_faiss_from_the_same_initial_centroids():
    x, labels = blobs()
    k = 24
    init = x[[np.flatnonzero(labels == j)[0] for j in range(k)]]
    ours = run_workers(1, x, lambda data: distributed_kmeans.kmeans(data, k, 8, seed=0, init=init))[0]
    reference = faiss.Kmeans(x.shape[1], k, niter=8, min_points_per_centroid=1, max_points_per_centroid=10**9)
    reference.train(x, init_centroids=init.copy())
    np.testing.assert_array_equal(ours.assignments, reference.assign(x)[1])
    np.testing.assert_allclose(ours.centroids, reference.centroids, atol=1e-5)
    assert ours.empty_split == 0


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_end_with_the_single_process_hierarchy(workers):
    x, _ = blobs(n=2400)
    cluster = lambda data: distributed_kmeans.hierarchical_kmeans(data, k=24, m=4, niter=6, seed=3)  # noqa: E731
    single = run_workers(1, x, cluster, chunk_rows=700)[0]
    for result in run_workers(workers, x, cluster, chunk_rows=256):
        np.testing.assert_array_equal(result.super_ids, single.super_ids)
        np.testing.assert_array_equal(result.sub_ids, single.sub_ids)
        assert result.objective == pytest.approx(single.objective, rel=1e-6)
    sizes = np.bincount(single.cluster_ids, minlength=24)
    assert sizes.min() > 0 and len(np.unique(single.super_ids)) == 4
    assert single.sub_ids.max() == 24 // 4 - 1


def test_empty_clusters_are_split_identically_on_every_worker():
    # 40 distinct points repeated: with k = 60 some clusters must end empty and be split.
    x = np.repeat(blobs(n=40, d=8)[0], 30, axis=0)
    cluster = lambda data: distributed_kmeans.kmeans(data, 60, niter=4, seed=1)  # noqa: E731
    single = run_workers(1, x, cluster)[0]
    assert single.empty_split > 0
    assert np.bincount(single.assignments, minlength=60).min() > 0
    for result in run_workers(2, x, cluster, chunk_rows=100):
        np.testing.assert_array_equal(result.assignments, single.assignments)


def test_reseeding_leaves_no_empty_cluster_and_keeps_the_total():
    centroids = np.arange(12, dtype=np.float32).reshape(6, 2) + 1
    counts = np.array([0, 9, 0, 3, 0, 1], dtype=np.float64)
    distributed_kmeans._reseed_empty(centroids, counts, np.random.default_rng(0))
    assert counts.min() > 0 and counts.sum() == 13
    assert len(np.unique(centroids, axis=0)) == 6


def test_level_one_alone_gives_one_cluster_the_mean():
    x, _ = blobs(n=500)
    result = run_workers(2, x, lambda data: distributed_kmeans.kmeans(data, 1, niter=3, seed=0))[0]
    np.testing.assert_allclose(result.centroids[0], x.mean(axis=0), atol=1e-6)
    assert not result.assignments.any()


@pytest.mark.parametrize("rows, sample", [(1500, None), (1500, 700), (8, None), (1500, 9)])
def test_pca_from_reduced_moments_is_the_in_memory_pca(rows, sample):
    x = np.random.default_rng(0).normal(size=(rows, 12)).astype(np.float32) * np.linspace(1, 4, 12)
    expected = pca_lib.fit_pca(x, 5, 0.5, sample_size=sample, seed=4)
    for fitted in run_workers(2, x, lambda data: distributed_pca.fit_pca(data, 5, 0.5, sample, seed=4)):
        np.testing.assert_allclose(fitted.mean, expected.mean, atol=1e-5)
        np.testing.assert_allclose(fitted.eigenvalues, expected.eigenvalues, rtol=1e-4)
        alignment = np.abs(np.sum(fitted.components * expected.components, axis=1))
        np.testing.assert_allclose(alignment, 1.0, atol=1e-4)


def test_sharded_rows_are_gathered_in_the_order_asked():
    x = np.arange(50, dtype=np.float32).reshape(25, 2)
    wanted = np.array([24, 0, 13, 12, 7])
    for gathered in run_workers(3, x, lambda data: data[wanted]):
        np.testing.assert_array_equal(gathered, x[wanted])


def test_cluster_features_logs_one_checksum_and_cleans_its_cache(tmp_path):
    x, _ = blobs(n=1200, d=20)
    lines = [[], []]

    def cluster(data):
        path = str(tmp_path / f"reduced_{data.collective.worker}.npy")
        result, _, _ = distributed_kmeans.cluster_features(data, 12, 3, 8, 5, seed=0, reduced_path=path,
                                                           log=lines[data.collective.worker].append)
        return result

    results = run_workers(2, x, cluster)
    checksums = [[line for line in worker if line.startswith("assignments checksum: ")] for worker in lines]
    expected = distributed_kmeans.assignments_checksum(results[0].super_ids, results[0].sub_ids)
    assert checksums == [[f"assignments checksum: {expected}"]] * 2
    assert not list(tmp_path.iterdir())


def test_checksum_changes_with_any_assignment():
    super_ids, sub_ids = np.array([0, 1, 1]), np.array([2, 0, 1])
    first = distributed_kmeans.assignments_checksum(super_ids, sub_ids)
    assert first == distributed_kmeans.assignments_checksum(super_ids.astype(np.int64), sub_ids)
    assert first != distributed_kmeans.assignments_checksum(super_ids, np.array([2, 1, 0]))
    assert len(first) == 64


def test_a_cluster_emptied_during_lloyd_is_reseeded_before_the_end():
    x, labels = blobs()
    init = x[[np.flatnonzero(labels == j)[0] for j in range(24)]]
    init[5] = 100.0  # far from every unit-norm point: cluster 5 is empty after the first assignment
    for result in run_workers(2, x, lambda data: distributed_kmeans.kmeans(data, 24, 6, seed=0, init=init)):
        assert result.empty_split == 0
        assert np.bincount(result.assignments, minlength=24).min() > 0


def test_sums_updated_from_moved_rows_equal_sums_recomputed_from_scratch():
    x = np.random.default_rng(0).normal(size=(500, 6)).astype(np.float32)
    work = distributed_kmeans._Workspace(7, 6, len(x))
    rng = np.random.default_rng(1)
    for _ in range(4):
        ids = rng.integers(0, 7, len(x))
        ids[::3] = work.assigned[::3].clip(0)  # a third of the rows keep their cluster
        for first in range(0, len(x), 128):
            work.move(np.arange(first, min(first + 128, len(x))), x[first:first + 128], ids[first:first + 128])
        work.commit(Collective())
        expected = np.zeros((7, 6))
        np.add.at(expected, ids, x.astype(np.float64))
        np.testing.assert_allclose(work.sums, expected, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(work.counts, np.bincount(ids, minlength=7))
