"""Tests for keras_dc.sampling: balance over clusters, uniformity within a cluster, weights."""

import numpy as np
import pytest
from scipy.stats import chisquare

from keras_dc.sampling import epoch_rng, inverse_size_weights, uniform_plan


def _unbalanced():
    """Cluster sizes 1, 10 and 1000 under ids 0, 2, 3 (id 1 is empty), shuffled."""
    ids = np.repeat([0, 2, 3], [1, 10, 1000])
    return np.random.default_rng(0).permutation(ids)


@pytest.mark.parametrize("size", [300, 301, 302, 1011])
def test_plan_is_balanced_over_clusters(size):
    ids = _unbalanced()
    plan = uniform_plan(ids, 4, size, np.random.default_rng(1))
    assert plan.dtype == np.int64 and len(plan) == size
    assert plan.min() >= 0 and plan.max() < len(ids)
    counts = np.bincount(ids[plan], minlength=4)
    assert counts[1] == 0
    assert np.all(np.abs(counts[[0, 2, 3]] - size / 3) <= 1)


def test_large_cluster_drawn_without_replacement():
    ids = _unbalanced()
    plan = uniform_plan(ids, 4, 1011, np.random.default_rng(2))
    large = plan[ids[plan] == 3]
    assert len(large) == 337 and len(np.unique(large)) == 337
    small = plan[ids[plan] == 2]
    assert len(np.unique(small)) == 10


def test_plan_is_shuffled():
    ids = _unbalanced()
    plan = uniform_plan(ids, 4, 300, np.random.default_rng(3))
    cluster_changes = np.count_nonzero(np.diff(ids[plan]) != 0)
    assert cluster_changes > 100


def test_within_cluster_draw_is_uniform():
    ids = _unbalanced()
    hits = np.zeros(len(ids), dtype=np.int64)
    for epoch in range(200):
        np.add.at(hits, uniform_plan(ids, 4, 300, epoch_rng(0, epoch)), 1)
    for cluster, per_member in ((3, 200 * 100 / 1000), (2, 200 * 100 / 10)):
        counts = hits[ids == cluster]
        assert counts.mean() == pytest.approx(per_member)
        assert chisquare(counts).pvalue > 1e-3
    assert hits[ids == 0].item() == 200 * 100


def test_truncation_does_not_favour_clusters():
    ids = np.repeat(np.arange(7), 50)
    totals = np.zeros(7)
    for epoch in range(300):
        plan = uniform_plan(ids, 7, 10, epoch_rng(5, epoch))
        counts = np.bincount(ids[plan], minlength=7)
        assert counts.min() >= 1 and counts.max() <= 2
        totals += counts
    # each cluster gets 10/7 per epoch on average: 428.6 +- about 10 over 300 epochs
    assert chisquare(totals).pvalue > 1e-3


def test_plan_validation():
    with pytest.raises(ValueError):
        uniform_plan(np.array([0, 5]), 3, 10, np.random.default_rng(0))


def test_inverse_size_weights():
    ids = _unbalanced()
    weights = inverse_size_weights(ids, 4)
    assert weights.dtype == np.float32 and weights.shape == ids.shape
    assert weights.mean() == pytest.approx(1.0, rel=1e-6)
    per_cluster = np.bincount(ids, weights=weights, minlength=4)
    assert per_cluster[1] == 0
    np.testing.assert_allclose(per_cluster[[0, 2, 3]], len(ids) / 3, rtol=1e-5)


def test_epoch_rng_determinism():
    ids = _unbalanced()
    a = uniform_plan(ids, 4, 50, epoch_rng(7, 3))
    b = uniform_plan(ids, 4, 50, epoch_rng(7, 3))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, uniform_plan(ids, 4, 50, epoch_rng(7, 4)))
    assert not np.array_equal(a, uniform_plan(ids, 4, 50, epoch_rng(8, 3)))
