"""Tests for keras_dc.pca against a numpy reference (np.cov + np.linalg.eigh)."""

import numpy as np
import pytest

from keras_dc.pca import PCA, fit_pca, l2_normalize


def _anisotropic(n=4000, d=6, seed=0):
    """Gaussian rows with a known, strongly anisotropic covariance and a non-zero mean."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    scales = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])[:d]
    return (rng.normal(size=(n, d)) * scales @ rotation.T + 3.0).astype(np.float32)


def _reference(x, dim):
    """Top-dim eigenvalues (descending) and eigenvectors (rows) of np.cov."""
    values, vectors = np.linalg.eigh(np.cov(x.astype(np.float64), rowvar=False))
    order = np.argsort(values)[::-1][:dim]
    return values[order], vectors[:, order].T


def test_matches_numpy_reference():
    x = _anisotropic()
    pca = fit_pca(x, dim=4)
    values, vectors = _reference(x, 4)
    np.testing.assert_allclose(pca.mean, x.mean(axis=0, dtype=np.float64), rtol=1e-5)
    np.testing.assert_allclose(pca.eigenvalues, values, rtol=1e-5)
    signs = np.sign(np.sum(pca.components * vectors, axis=1))
    np.testing.assert_allclose(pca.components * signs[:, None], vectors, atol=1e-5)
    assert pca.components.shape == (4, 6) and pca.components.dtype == np.float32


def test_default_whitening_gives_identity_covariance():
    """Power 0.5 on covariance eigenvalues is full whitening, as in the reference."""
    x = _anisotropic()
    out = fit_pca(x, dim=5).apply(x, batch_size=333)
    assert out.dtype == np.float32 and out.shape == (len(x), 5)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(out, rowvar=False), np.eye(5), atol=1e-4)


@pytest.mark.parametrize("power", [0.0, 0.25, 1.0])
def test_whitening_power_scales_variances(power):
    """Projected variances are eigenvalue**(1 - 2 * power) and uncorrelated."""
    x = _anisotropic()
    out = fit_pca(x, dim=6, whitening_power=power).apply(x)
    values, _ = _reference(x, 6)
    cov = np.cov(out.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(np.diag(cov), values ** (1 - 2 * power), rtol=1e-4)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0.0, atol=1e-4 * values[0])


def test_dim_is_clipped_and_validated():
    x = _anisotropic(n=50)
    assert fit_pca(x, dim=100).components.shape == (6, 6)
    with pytest.raises(ValueError, match="dimension"):
        fit_pca(x, dim=0)


def test_sample_is_seeded_and_used():
    x = _anisotropic(n=2000)
    a = fit_pca(x, dim=3, sample_size=500, seed=1)
    b = fit_pca(x, dim=3, sample_size=500, seed=1)
    c = fit_pca(x, dim=3, sample_size=500, seed=2)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert not np.array_equal(a.mean, c.mean)
    rows = np.sort(np.random.default_rng(1).choice(len(x), size=500, replace=False))
    np.testing.assert_allclose(a.eigenvalues, _reference(x[rows], 3)[0], rtol=1e-5)


def test_round_trip_through_npz(tmp_path):
    x = _anisotropic(n=300)
    pca = fit_pca(x, dim=3, whitening_power=0.75)
    path = tmp_path / "assignments.npz"
    np.savez(path, assignments=np.arange(3), **pca.to_arrays())
    with np.load(path, allow_pickle=False) as stored:
        restored = PCA.from_arrays(stored)
    assert restored.whitening_power == 0.75
    np.testing.assert_array_equal(restored.apply(x), pca.apply(x))


def test_degenerate_input_is_finite():
    x = np.tile(np.arange(8, dtype=np.float32), (20, 1))
    for power in (0.5, 1.0):
        out = fit_pca(x, dim=4, whitening_power=power).apply(x)
        assert np.all(np.isfinite(out))
    rank_one = np.outer(np.arange(20), np.ones(8)).astype(np.float32)
    assert np.all(np.isfinite(fit_pca(rank_one, dim=4, whitening_power=1.0).apply(rank_one)))


def test_float64_input_is_not_modified():
    x = _anisotropic(n=100).astype(np.float64)
    before = x.copy()
    fit_pca(x, dim=2)
    np.testing.assert_array_equal(x, before)


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]])
    out = l2_normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]])


def test_small_eigenvalues_are_raised_to_1e5_of_the_largest():
    """The reference regularises whitening: eigenvalues below 1e-5 * max become 1e-5 * max, others stay."""
    rng = np.random.default_rng(0)
    scales = np.array([10.0, 1.0, 1e-2, 1e-4, 0.0])
    x = rng.normal(size=(5000, 5)) * scales
    pca = fit_pca(x, dim=5)
    values = _reference(x, 5)[0]
    expected = np.maximum(values, 1e-5 * values[0])
    np.testing.assert_allclose(pca.eigenvalues, expected, rtol=1e-4)
    assert expected[3] == 1e-5 * values[0] and values[3] < expected[3]


def _wide(n=40, d=120, seed=3):
    """Fewer rows than dimensions, with a decaying spectrum and a non-zero mean."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * np.linspace(4.0, 0.2, d) + 1.5).astype(np.float32)


def test_fewer_rows_than_dims_matches_the_covariance_route():
    x = _wide()
    pca = fit_pca(x, dim=20)
    values, vectors = _reference(x, 20)
    np.testing.assert_allclose(pca.mean, x.mean(axis=0, dtype=np.float64), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pca.eigenvalues, values, rtol=1e-4)
    signs = np.sign(np.sum(pca.components * vectors, axis=1))
    np.testing.assert_allclose(pca.components * signs[:, None], vectors, atol=1e-4)


def test_fewer_rows_than_dims_completes_the_basis_beyond_the_rank():
    x = _wide()
    pca = fit_pca(x, dim=100)
    values, _ = _reference(x, 100)
    assert pca.components.shape == (100, 120)
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(100), atol=1e-5)
    np.testing.assert_allclose(pca.eigenvalues[:39], values[:39], rtol=1e-4)
    assert np.all(pca.eigenvalues[39:] <= pca.eigenvalues[0] * 1e-4) and np.all(np.isfinite(pca.apply(x)))


def test_fewer_rows_than_dims_never_decomposes_the_covariance(monkeypatch):
    sizes = []
    eigh = np.linalg.eigh
    monkeypatch.setattr(np.linalg, "eigh", lambda matrix: sizes.append(matrix.shape[0]) or eigh(matrix))
    fit_pca(_wide(), dim=10)
    fit_pca(_anisotropic(), dim=4)
    assert sizes == [40, 6]
