"""PCA with whitening, the feature reduction before k-means (docs/method.md, cycle step 2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# Eigenvalues below this fraction of the largest are raised to it (the reference's PCA).
_EIG_FLOOR_REL = 1e-5
_EIG_FLOOR_ZERO = 1e-8  # the floor when the covariance is zero
_CHUNK_ELEMENTS = 2**24
_RANK_TOLERANCE = 1e-12  # Gram eigenvalues below this fraction of the largest span no direction of the rows


@dataclass
class PCA:
    """A fitted PCA: projects centred rows on the top principal directions and scales
    each direction by eigenvalue**(-whitening_power)."""

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    whitening_power: float = 0.5

    def apply(self, x: np.ndarray, batch_size: int = 65536, out: np.ndarray | None = None) -> np.ndarray:
        """Reduce and whiten the rows of x into float32 (N, d_out) rows (`out`, or a new array).

        The mean and the scale are folded into one matrix and a bias, as faiss does, so
        each batch costs one float32 product written straight into `out`, no centred copy.
        """
        matrix, bias = self._folded()
        if out is None:
            out = np.empty((x.shape[0], matrix.shape[1]), dtype=np.float32)
        for start in range(0, x.shape[0], batch_size):
            block = out[start:start + batch_size]
            np.matmul(np.asarray(x[start:start + batch_size], dtype=np.float32), matrix, out=block)
            block -= bias
        return out

    def reduce(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The rows as k-means sees them (docs/method.md, cycle steps 2-3): reduced, whitened, L2-normalised."""
        out = self.apply(x, out=out)
        normalize_rows(out)
        return out

    def _folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(d_in, d_out) matrix and (d_out,) bias with apply(x) = x @ matrix - bias, in float64 then float32."""
        scale = self.eigenvalues.astype(np.float64) ** -self.whitening_power
        matrix = self.components.astype(np.float64).T * scale
        return matrix.astype(np.float32), (self.mean.astype(np.float64) @ matrix).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted state as plain arrays with `pca_` keys, storable in an .npz."""
        return {
            "pca_mean": self.mean,
            "pca_components": self.components,
            "pca_eigenvalues": self.eigenvalues,
            "pca_whitening_power": np.array(self.whitening_power, dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> PCA:
        """Rebuild a PCA from `to_arrays` output (other keys are ignored)."""
        return cls(
            mean=np.asarray(arrays["pca_mean"], dtype=np.float32),
            components=np.asarray(arrays["pca_components"], dtype=np.float32),
            eigenvalues=np.asarray(arrays["pca_eigenvalues"], dtype=np.float32),
            whitening_power=float(arrays["pca_whitening_power"]),
        )


def _row_chunks(x: np.ndarray):
    """Yield float64 copies of consecutive row blocks of x, each of bounded size."""
    rows = max(1, _CHUNK_ELEMENTS // max(1, x.shape[1]))
    for start in range(0, x.shape[0], rows):
        yield x[start:start + rows].astype(np.float64)


def _mean_and_covariance(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of the rows of x, accumulated in float64 chunks."""
    n, d = x.shape
    total = np.zeros(d, dtype=np.float64)
    for chunk in _row_chunks(x):
        total += chunk.sum(axis=0)
    mean = total / n
    cov = np.zeros((d, d), dtype=np.float64)
    for chunk in _row_chunks(x):
        chunk -= mean
        cov += chunk.T @ chunk
    return mean, cov / max(n - 1, 1)


def fit_pca(
    x: np.ndarray,
    dim: int,
    whitening_power: float = 0.5,
    sample_size: int | None = None,
    seed: int = 0,
) -> PCA:
    """Fit a PCA keeping min(dim, d_in) directions, on a seeded random sample of
    sample_size rows (all rows when sample_size is None or >= N)."""
    if dim < 1:
        raise ValueError(f"PCA dimension must be >= 1, got {dim}")
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"PCA needs a non-empty 2-d array, got shape {x.shape}")
    if sample_size is not None and sample_size < x.shape[0]:
        rows = np.random.default_rng(seed).choice(x.shape[0], size=sample_size, replace=False)
        x = x[np.sort(rows)]
    if x.shape[0] < x.shape[1]:
        return pca_from_rows(x, dim, whitening_power)
    mean, cov = _mean_and_covariance(x)
    return pca_from_moments(mean, cov, dim, whitening_power)


def _floored(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues (largest first) with those below 1e-5 * the largest raised to it, as the reference
    regularises the whitening (docs/method.md): near-null directions never get full weight."""
    largest = eigenvalues[0]
    return np.maximum(eigenvalues, _EIG_FLOOR_REL * largest if largest > 0 else _EIG_FLOOR_ZERO)


def pca_from_moments(mean: np.ndarray, cov: np.ndarray, dim: int, whitening_power: float = 0.5) -> PCA:
    """The PCA of data with this mean and covariance, keeping min(dim, d_in) directions; lets
    workers fit one PCA from moments summed over their shards."""
    eigenvalues, vectors = np.linalg.eigh(cov)
    return pca_from_eigen(mean, eigenvalues, vectors, dim, whitening_power)


def pca_from_rows(x: np.ndarray, dim: int, whitening_power: float = 0.5) -> PCA:
    """The PCA of fewer rows than dimensions (N < D) from the N x N Gram matrix of the centred
    rows, as faiss.PCAMatrix does: N^2 D work instead of the D^3 eigen-decomposition of the
    covariance. Same eigenpairs; the directions beyond the rows' rank get eigenvalue 0 and an
    orthonormal completion, as the covariance route gives them."""
    rows = x.astype(np.float64)
    mean = rows.mean(axis=0)
    rows -= mean
    gram_values, gram_vectors = np.linalg.eigh(rows @ rows.T)
    order = np.argsort(gram_values)[::-1]
    gram_values, gram_vectors = gram_values[order], gram_vectors[:, order]
    keep = min(dim, x.shape[1])
    found = int(np.sum(gram_values[:keep] > _RANK_TOLERANCE * max(gram_values[0], 0.0)))
    vectors = rows.T @ (gram_vectors[:, :found] / np.sqrt(gram_values[:found]))
    if keep > found:
        complement = np.linalg.qr(vectors, mode="complete")[0][:, found:keep]
        vectors = np.concatenate([vectors, complement], axis=1)
    eigenvalues = np.zeros(keep)
    eigenvalues[:found] = gram_values[:found] / max(x.shape[0] - 1, 1)
    return pca_from_eigen(mean, eigenvalues, vectors, dim, whitening_power)


def pca_from_eigen(mean: np.ndarray, eigenvalues: np.ndarray, vectors: np.ndarray, dim: int,
                   whitening_power: float = 0.5) -> PCA:
    """The PCA of these covariance eigenpairs (vectors as columns), the largest min(dim, count) kept."""
    order = np.argsort(eigenvalues)[::-1][: min(dim, vectors.shape[1])]
    eigenvalues = _floored(np.clip(eigenvalues[order], 0.0, None))
    return PCA(
        mean=mean.astype(np.float32),
        components=np.ascontiguousarray(vectors[:, order].T, dtype=np.float32),
        eigenvalues=eigenvalues.astype(np.float32),
        whitening_power=float(whitening_power),
    )


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Scale each row of x to unit L2 norm (rows of norm < eps are divided by eps);
    returns a new float32 array."""
    out = np.array(x, dtype=np.float32)
    normalize_rows(out, eps)
    return out


def normalize_rows(x: np.ndarray, eps: float = 1e-12) -> None:
    """l2_normalize in place on a float32 array (no temporary of x's size)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    x /= np.maximum(norms, eps)[:, None]
