"""keras_dc.kmeans and distributed PCA: against faiss, against one process, across shardings, and the
empty-cluster fix, the grown super-clusters and the label arithmetic of the results.

Several workers are simulated in one process by threads whose collective sums
through a barrier (a test double; the real collective is TF's, covered by
test_multi_worker.py). Every worker must end with the single-process result.
"""

import threading

import faiss
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from keras_dc import distributed_pca, kmeans, pca as pca_lib
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
    slots, barrier = [None] * workers, threading.Barrier(workers, timeout=600)  # a bound against a hang only
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
    ours = run_workers(1, x, lambda data: kmeans.kmeans(data, k, 8, seed=0, init=init))[0]
    reference = faiss.Kmeans(x.shape[1], k, niter=8, min_points_per_centroid=1, max_points_per_centroid=10**9)
    reference.train(x, init_centroids=init.copy())
    np.testing.assert_array_equal(ours.assignments, reference.assign(x)[1])
    np.testing.assert_allclose(ours.centroids, reference.centroids, atol=1e-5)
    assert ours.empty_split == 0


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_end_with_the_single_process_hierarchy(workers):
    x, _ = blobs(n=2400)
    cluster = lambda data: kmeans.hierarchical_kmeans(data, k=24, m=4, niter=6, seed=3)  # noqa: E731
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
    cluster = lambda data: kmeans.kmeans(data, 60, niter=4, seed=1)  # noqa: E731
    single = run_workers(1, x, cluster)[0]
    assert single.empty_split > 0
    assert np.bincount(single.assignments, minlength=60).min() > 0
    for result in run_workers(2, x, cluster, chunk_rows=100):
        np.testing.assert_array_equal(result.assignments, single.assignments)


def test_reseeding_leaves_no_empty_cluster_and_keeps_the_total():
    centroids = np.arange(12, dtype=np.float32).reshape(6, 2) + 1
    counts = np.array([0, 9, 0, 3, 0, 1], dtype=np.float64)
    kmeans._reseed_empty(centroids, counts, np.random.default_rng(0))
    assert counts.min() > 0 and counts.sum() == 13
    assert len(np.unique(centroids, axis=0)) == 6


def test_level_one_alone_gives_one_cluster_the_mean():
    x, _ = blobs(n=500)
    result = run_workers(2, x, lambda data: kmeans.kmeans(data, 1, niter=3, seed=0))[0]
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
        result, _, _ = kmeans.cluster_features(data, 12, 3, 8, 5, seed=0, reduced_path=path,
                                                           log=lines[data.collective.worker].append)
        return result

    results = run_workers(2, x, cluster)
    checksums = [[line for line in worker if line.startswith("assignments checksum: ")] for worker in lines]
    expected = kmeans.assignments_checksum(results[0].super_ids, results[0].sub_ids)
    assert checksums == [[f"assignments checksum: {expected}"]] * 2
    assert not list(tmp_path.iterdir())


def test_checksum_changes_with_any_assignment():
    super_ids, sub_ids = np.array([0, 1, 1]), np.array([2, 0, 1])
    first = kmeans.assignments_checksum(super_ids, sub_ids)
    assert first == kmeans.assignments_checksum(super_ids.astype(np.int64), sub_ids)
    assert first != kmeans.assignments_checksum(super_ids, np.array([2, 1, 0]))
    assert len(first) == 64


def test_a_cluster_emptied_during_lloyd_is_reseeded_before_the_end():
    x, labels = blobs()
    init = x[[np.flatnonzero(labels == j)[0] for j in range(24)]]
    init[5] = 100.0  # far from every unit-norm point: cluster 5 is empty after the first assignment
    for result in run_workers(2, x, lambda data: kmeans.kmeans(data, 24, 6, seed=0, init=init)):
        assert result.empty_split == 0
        assert np.bincount(result.assignments, minlength=24).min() > 0


def test_sums_updated_from_moved_rows_equal_sums_recomputed_from_scratch():
    x = np.random.default_rng(0).normal(size=(500, 6)).astype(np.float32)
    work = kmeans._Workspace(7, 6, len(x))
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


def one(x):
    """x as the features of a single process."""
    return ShardedFeatures(np.ascontiguousarray(x, np.float32), 0, len(x), Collective())


def _blobs(num_blobs, per_blob=40, d=8, spread=0.05, seed=0, centers=None):
    """Well separated Gaussian blobs; returns (points float32, blob label per point)."""
    rng = np.random.default_rng(seed)
    if centers is None:
        centers = rng.normal(size=(num_blobs, d)) * 10
    labels = np.repeat(np.arange(len(centers)), per_blob)
    points = centers[labels] + rng.normal(size=(len(labels), centers.shape[1])) * spread
    return points.astype(np.float32), labels


def _grouped_blobs(m, per_group, d=8, seed=0):
    """m far-apart groups of per_group nearby blobs; labels are (group, blob in group)."""
    rng = np.random.default_rng(seed)
    groups = rng.normal(size=(m, d)) * 1000
    offsets = rng.normal(size=(m, per_group, d)) * 10
    centers = (groups[:, None, :] + offsets).reshape(m * per_group, d)
    points, labels = _blobs(len(centers), per_blob=30, centers=centers, seed=seed)
    return points, labels // per_group, labels


def _recomputed_objective(x, assignments, centroids):
    diff = x.astype(np.float64) - centroids.astype(np.float64)[assignments]
    return float(np.sum(diff**2))


def _same_partition(a, b):
    return adjusted_rand_score(a, b) == 1.0


# k-means initialises centroids from random points and Lloyd cannot leave a local optimum
# (two centroids in one blob), so recovery tests use seeds whose initialisation works.


def test_kmeans_recovers_blobs_and_objective():
    x, labels = _blobs(6)
    result = kmeans.kmeans(one(x), 6, niter=20, seed=2)
    assert result.assignments.dtype == np.int64 and result.centroids.shape == (6, 8)
    assert result.centroids.dtype == np.float32
    assert _same_partition(result.assignments, labels)
    assert result.objective == pytest.approx(
        _recomputed_objective(x, result.assignments, result.centroids), rel=1e-6
    )
    np.testing.assert_allclose(
        result.objective, len(x) * 8 * 0.05**2, rtol=0.2
    )


def test_kmeans_assigns_every_point_to_its_nearest_centroid():
    x = np.random.default_rng(3).normal(size=(300, 4)).astype(np.float32)
    result = kmeans.kmeans(one(x), 7, niter=5, seed=0)
    dist = ((x[:, None, :] - result.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(result.assignments, dist.argmin(axis=1))
    assert result.empty_split == 0


def test_kmeans_seed_determinism():
    x = np.random.default_rng(1).normal(size=(400, 5)).astype(np.float32)
    a = kmeans.kmeans(one(x), 8, niter=3, seed=5)
    b = kmeans.kmeans(one(x), 8, niter=3, seed=5)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    others = [kmeans.kmeans(one(x), 8, niter=3, seed=s).assignments for s in (6, 7, 8)]
    assert any(not np.array_equal(a.assignments, o) for o in others)


def test_kmeans_single_cluster_and_validation():
    x = np.random.default_rng(2).normal(size=(50, 3)).astype(np.float32)
    result = kmeans.kmeans(one(x), 1, niter=10, seed=0)
    np.testing.assert_array_equal(result.assignments, 0)
    np.testing.assert_allclose(result.centroids[0], x.mean(axis=0), atol=1e-6)
    assert result.objective == pytest.approx(np.sum((x - x.mean(axis=0)) ** 2), rel=1e-5)
    with pytest.raises(ValueError, match="at least k=60"):
        kmeans.kmeans(one(x), 60, niter=10, seed=0)


def _two_clusters_and_empties(num_empty, seed=0):
    """31 points in clusters of 25 and 6 members, followed by num_empty empty clusters."""
    x = np.random.default_rng(seed).normal(size=(31, 3)).astype(np.float32)
    assignments = np.repeat([0, 1], [25, 6]).astype(np.int64)
    centroids = np.zeros((2 + num_empty, 3), dtype=np.float32)
    centroids[:2] = [x[:25].mean(0), x[25:].mean(0)]
    return x, assignments, centroids


def test_split_one_empty_cluster_moves_half_of_a_size_weighted_donor():
    x, assignments, centroids = _two_clusters_and_empties(1)
    donors = []
    for seed in range(300):
        new, new_centroids, n_split = kmeans.split_empty_clusters(
            x, assignments, centroids, np.random.default_rng(seed)
        )
        moved = np.flatnonzero(new != assignments)
        donor = int(assignments[moved[0]])
        size = int(np.sum(assignments == donor))
        assert n_split == 1 and np.all(new[moved] == 2) and np.all(assignments[moved] == donor)
        assert len(moved) == size // 2
        np.testing.assert_array_equal(new_centroids[2], centroids[donor] * np.float32(1 + 1e-7))
        np.testing.assert_array_equal(new_centroids[donor], centroids[donor] * np.float32(1 - 1e-7))
        assert not np.array_equal(new_centroids[2], new_centroids[donor])
        donors.append(donor)
    # donor probability proportional to size: 25/31 = 0.806, std 0.023 over 300 draws
    assert 0.73 < np.mean(np.array(donors) == 0) < 0.88


def test_split_two_empty_clusters_fills_all():
    x, assignments, centroids = _two_clusters_and_empties(2)
    # every split halves one cluster (floor moves), so from sizes (25, 6) the only
    # reachable size sets after two splits are:
    reachable = [[6, 6, 7, 12], [3, 3, 12, 13], [6, 6, 6, 13], [1, 2, 3, 25]]
    seen = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        new, _, n_split = kmeans.split_empty_clusters(x, assignments, centroids, rng)
        counts = sorted(np.bincount(new, minlength=4).tolist())
        assert n_split == 2 and counts in reachable
        seen.add(tuple(counts))
    assert len(seen) > 1


def test_split_keeps_points_nearer_the_donor_side():
    """The moved half is the one closer to centroid*(1+eps): the points with the larger
    projection on the centroid."""
    x = np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32)
    assignments = np.zeros(4, dtype=np.int64)
    centroids = np.array([[2.5], [0.0]], dtype=np.float32)
    new, _, n_split = kmeans.split_empty_clusters(x, assignments, centroids, np.random.default_rng(0))
    np.testing.assert_array_equal(new, [0, 0, 1, 1])
    assert n_split == 1


def test_split_empty_clusters_rejects_too_few_points():
    x = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(ValueError):
        kmeans.split_empty_clusters(x, np.zeros(3, np.int64), np.zeros((4, 2)), np.random.default_rng(0))


@pytest.mark.parametrize(
    "x, k",
    [
        (np.ones((1000, 4), dtype=np.float32), 10),
        (np.repeat(np.random.default_rng(0).normal(size=(5, 4)), 20, axis=0), 20),
    ],
)
def test_kmeans_degenerate_data_fills_all_clusters(x, k):
    result = kmeans.kmeans(one(x.astype(np.float32)), k, niter=10, seed=0)
    assert np.all(np.bincount(result.assignments, minlength=k) > 0)
    assert result.empty_split > 0
    assert np.isfinite(result.objective)


def test_hierarchical_label_arithmetic_and_recovery():
    m, per_group = 3, 4
    x, groups, blobs = _grouped_blobs(m, per_group)
    result = kmeans.hierarchical_kmeans(one(x), k=m * per_group, m=m, niter=20, seed=4)
    ids = result.cluster_ids
    assert result.super_ids.dtype == np.int32 and result.sub_ids.dtype == np.int32
    assert ids.min() >= 0 and ids.max() < m * per_group
    np.testing.assert_array_equal(ids // per_group, result.super_ids)
    np.testing.assert_array_equal(ids % per_group, result.sub_ids)
    assert len(np.unique(ids)) == m * per_group
    assert _same_partition(result.super_ids, groups)
    assert _same_partition(ids, blobs)


def test_hierarchical_objectives_match_levels():
    x, groups, blobs = _grouped_blobs(2, 3)
    result = kmeans.hierarchical_kmeans(one(x), k=6, m=2, niter=20, seed=0)
    super_ref = kmeans.kmeans(one(x), 2, niter=20, seed=0)
    np.testing.assert_array_equal(result.super_ids, super_ref.assignments)
    assert result.super_objective == pytest.approx(super_ref.objective)
    expected = 0.0
    for s in range(2):
        rows = np.flatnonzero(result.super_ids == s)
        sub = kmeans.kmeans(one(x[rows]), 3, niter=20, seed=1 + s)
        np.testing.assert_array_equal(result.sub_ids[rows], sub.assignments)
        expected += sub.objective
    assert result.objective == pytest.approx(expected)


def test_hierarchical_trivial_levels():
    x, labels = _blobs(4, per_blob=20)
    flat = kmeans.hierarchical_kmeans(one(x), k=4, m=1, niter=20, seed=4)
    np.testing.assert_array_equal(flat.super_ids, 0)
    assert _same_partition(flat.cluster_ids, labels)
    top = kmeans.hierarchical_kmeans(one(x), k=4, m=4, niter=20, seed=4)
    np.testing.assert_array_equal(top.sub_ids, 0)
    assert _same_partition(top.cluster_ids, labels)
    assert top.objective == pytest.approx(top.super_objective, rel=1e-5)


def test_hierarchical_validation():
    x, _ = _blobs(4, per_blob=10)
    with pytest.raises(ValueError, match="multiple"):
        kmeans.hierarchical_kmeans(one(x), k=6, m=4, niter=5, seed=0)
    with pytest.raises(ValueError, match="smaller k"):
        kmeans.hierarchical_kmeans(one(x), k=50, m=2, niter=5, seed=0)


def test_a_super_cluster_too_small_for_its_sub_clusters_is_grown_from_the_largest():
    rng = np.random.default_rng(0)
    big = rng.normal(0.0, 1.0, (36, 2))
    far = np.full((4, 2), 100.0) + rng.normal(0.0, 0.1, (4, 2))
    result = kmeans.hierarchical_kmeans(one(np.concatenate([big, far])), k=20, m=2, niter=5, seed=0)
    sizes = np.bincount(result.super_ids, minlength=2)
    assert sizes.min() >= 10
    assert len(np.unique(result.cluster_ids)) == 20
    assert len(set(result.super_ids[36:])) == 1  # the far points stay together


def test_grow_small_clusters_takes_the_donor_points_nearest_the_small_centroid():
    x = np.array([[0.0], [1.0], [2.0], [3.0], [10.0], [11.0]], np.float32)
    centroids = np.array([[1.5], [10.5], [50.0]], np.float32)
    assignments = np.array([0, 0, 0, 0, 1, 1])
    grown, count = kmeans.grow_small_clusters(x, assignments, centroids, min_size=2)
    assert count == 1
    np.testing.assert_array_equal(np.bincount(grown, minlength=3), [2, 2, 2])
    np.testing.assert_array_equal(grown, [0, 0, 2, 2, 1, 1])  # 2 and 3 are nearest to 50 among cluster 0
    with pytest.raises(ValueError):
        kmeans.grow_small_clusters(x, assignments, centroids, min_size=3)


def test_warn_small_clusters():
    assert kmeans.warn_small_clusters(10000, 100, 4) == []
    both = kmeans.warn_small_clusters(1000, 100, 40)
    assert len(both) == 2 and "super-clusters" in both[0] and "sub-clusters" in both[1]
    only_sub = kmeans.warn_small_clusters(39 * 99, 100, 4)
    assert len(only_sub) == 1 and "sub-clusters" in only_sub[0]
    assert kmeans.warn_small_clusters(39 * 100, 100, 4) == []
    assert kmeans.warn_small_clusters(10, 1, 1) == []


def test_cluster_array_end_to_end():
    x, labels = _blobs(5, per_blob=50, d=16, spread=0.5)
    x = x @ np.random.default_rng(1).normal(size=(16, 32)).astype(np.float32)
    result, pca, timings = kmeans.cluster_array(x, k=5, m=1, pca_dim=8, niter=20, seed=0)
    assert _same_partition(result.cluster_ids, labels)
    assert pca.components.shape == (8, 32) and pca.whitening_power == 0.5
    assert set(timings) == {"pca_s", "kmeans_s", "total_s"}
    assert timings["total_s"] >= timings["pca_s"] >= 0
