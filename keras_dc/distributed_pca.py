"""PCA with whitening fitted on feature shards (docs/method.md, cycle steps 2-3, over several workers).

The mean and the covariance are sums over rows, so each worker sums its own
rows and the sums are all-reduced; worker 0's eigen-decomposition is then
broadcast so that every worker projects with the very same PCA.
"""

from __future__ import annotations

import numpy as np

from keras_dc import progress
from keras_dc.feature_cache import CacheWriter, ShardedFeatures
from keras_dc.pca import PCA, pca_from_moments, pca_from_rows


class NonFiniteFeatures(ValueError):
    """The features hold a NaN or an infinity (the network diverged): there is nothing to cluster."""


def _finite(values: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        raise NonFiniteFeatures("the network's features hold NaN or infinite values")
    return values


def _sample(total: int, sample_size: int | None, seed: int) -> np.ndarray | None:
    """The sorted global rows of the seeded sample (the same draw as pca.fit_pca); None means all rows."""
    if sample_size is None or sample_size >= total:
        return None
    return np.sort(np.random.default_rng(seed).choice(total, size=sample_size, replace=False))


def _local_sample(data: ShardedFeatures, rows: np.ndarray | None) -> np.ndarray | None:
    """This worker's positions among the sampled rows; None means all rows."""
    if rows is None:
        return None
    return rows[(rows >= data.start) & (rows < data.stop)] - data.start


def _sampled_chunks(data: ShardedFeatures, positions: np.ndarray | None, stage: progress.Stage, passed: int):
    """This worker's float32 chunks, restricted to the sampled positions; `stage` counts the rows read,
    `passed` passes over them before this one."""
    rows = data.rows.shape[0]
    for first, chunk in data.chunks():
        read = first + len(chunk)
        if positions is not None:
            wanted = positions[(positions >= first) & (positions < read)]
            chunk = chunk[wanted - first]
        yield chunk
        stage.update(passed * rows + read)


def _moments(data: ShardedFeatures, positions: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of the sampled rows of all workers, from all-reduced sums.

    Two passes: the mean first, so that the scatter is of centred rows (no cancellation), each
    chunk's scatter a float32 matrix product (the cost of the PCA) summed in float64.
    """
    dim = data.shape[1]
    stage = progress.Stage("clustering: PCA moments", 2 * data.rows.shape[0], "row")
    sums = np.zeros(dim + 1)
    for chunk in _sampled_chunks(data, positions, stage, 0):
        sums[:dim] += chunk.sum(axis=0, dtype=np.float64)
        sums[dim] += len(chunk)
    sums = data.collective.all_reduce_sum(sums)
    count, mean = sums[dim], sums[:dim] / sums[dim]
    scatter = np.zeros((dim, dim))
    for chunk in _sampled_chunks(data, positions, stage, 1):
        centred = chunk - mean.astype(np.float32)
        scatter += centred.T @ centred
    return mean, data.collective.all_reduce_sum(scatter) / max(count - 1, 1)


def fit_pca(data: ShardedFeatures, dim: int, whitening_power: float = 0.5, sample_size: int | None = None,
            seed: int = 0) -> PCA:
    """The PCA that pca.fit_pca would fit on all workers' rows together (or on the same seeded
    sample of sample_size rows), identical on every worker; NonFiniteFeatures for a NaN or infinity
    (the sums every worker sees, so all raise together)."""
    if dim < 1:
        raise ValueError(f"PCA dimension must be >= 1, got {dim}")
    rows = _sample(data.total, sample_size, seed)
    if (data.total if rows is None else len(rows)) < data.shape[1]:  # fewer rows than dims: the Gram route
        fitted = pca_from_rows(_finite(data[np.arange(data.total) if rows is None else rows]), dim,
                               whitening_power)
    else:
        mean, cov = _moments(data, _local_sample(data, rows))
        fitted = pca_from_moments(_finite(mean), _finite(cov), dim, whitening_power)
    broadcast = data.collective.broadcast
    return PCA(broadcast(fitted.mean), broadcast(fitted.components), broadcast(fitted.eigenvalues),
               fitted.whitening_power)


def project_to_cache(data: ShardedFeatures, pca: PCA, path: str, dtype: str = "float32") -> ShardedFeatures:
    """Reduces, whitens and L2-normalises this worker's rows chunk by chunk into a new cache file."""
    stage = progress.Stage("clustering: PCA projection", data.rows.shape[0], "row")
    with CacheWriter(path, data.rows.shape[0], pca.components.shape[0], dtype) as writer:
        for first, chunk in data.chunks():
            writer.write(pca.reduce(chunk))
            stage.update(first + len(chunk))
        cache = writer.finish()
    return ShardedFeatures(cache.array, data.start, data.total, data.collective, data.chunk_rows)
