"""Features on disk, sharded over workers: each worker's rows of an N x d matrix in a .npy file
written front to back and read as a numpy memmap.

Clustering reads a shard chunk by chunk, so its RAM is bounded by one chunk and
the centroids, not by N x d. Rows may be stored as float16 to halve the disk and
page-cache footprint; reads always return float32. Caches are scratch files, never fsynced:
a killed run extracts again. Each clustering writes in a fresh folder of its own inside the
cache folder, and every file is created under a new unique name (O_EXCL, then renamed), so
runs sharing a cache folder never meet and a link planted there is never followed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf

from keras_dc import progress
from keras_dc.config import CACHE_DTYPES, naming_file
from keras_dc.distribute import Collective

CHUNK_ELEMENTS = 2**24  # 64 MB of float32 per chunk read from a cache


class CacheBudgetError(ValueError):
    """The feature caches of a worker would exceed the size it may use."""


@dataclasses.dataclass
class CacheSettings:
    """Where the caches of one worker go, how rows are stored, and the size limit (0: none) in GB."""

    directory: str
    dtype: str = "float32"
    max_gb: float = 0.0


class FeatureCache:
    """A (rows, dim) feature matrix in a .npy file, memory-mapped read-only; CacheWriter makes one."""

    def __init__(self, path: str, array: np.ndarray):
        self.path = path
        self.array = array

    @classmethod
    def open(cls, path: str) -> FeatureCache:
        """An existing cache file, read-only."""
        return cls(path, np.load(path, mmap_mode="r"))

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape

    def remove(self) -> None:
        """Deletes the file (the mapping stays readable until this object is dropped)."""
        if os.path.exists(self.path):
            os.remove(self.path)


class CacheWriter:
    """Writes a new (rows, dim) cache file front to back with plain file writes, 3x faster than
    writing through a fresh memory map (every page of which faults). `finish` returns the cache;
    leaving the `with` block on an error removes the partial file."""

    def __init__(self, path: str, rows: int, dim: int, dtype: str = "float32"):
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"cache dtype must be one of {CACHE_DTYPES}, got {dtype!r}")
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        self.path, self.shape, self.dtype = path, (rows, dim), np.dtype(dtype)
        self._written = 0
        handle, self._temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path))
        self._file = os.fdopen(handle, "wb")  # mkstemp: O_EXCL on a new name, so no planted link is followed
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._file, header)

    def write(self, rows: np.ndarray) -> None:
        """Appends rows (any float dtype, converted to the cache's)."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.ndim != 2 or rows.shape[1] != self.shape[1] or self._written + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path}: rows of shape {rows.shape} do not fit a {self.shape} cache "
                             f"holding {self._written} rows")
        with naming_file(self.path):
            rows.tofile(self._file)
        self._written += len(rows)

    def finish(self) -> FeatureCache:
        """The complete cache, memory-mapped read-only; refuses a cache missing rows."""
        with naming_file(self.path):
            self._file.close()
        if self._written != self.shape[0]:
            raise ValueError(f"{self.path}: {self._written} of {self.shape[0]} rows written")
        os.replace(self._temporary, self.path)  # replaces a link at `path` itself, never its target
        return FeatureCache.open(self.path)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        with naming_file(self.path):
            self._file.close()
        if error_type is not None:
            for path in (self._temporary, self.path):
                if os.path.lexists(path):
                    os.remove(path)


@dataclasses.dataclass
class ShardedFeatures:
    """The rows [start, start + len(rows)) of an N x d matrix that this worker holds, and the
    collective that joins the workers.

    Indexing with global row numbers, `features[rows]`, gathers those rows from
    whichever worker holds them (a collective call: every worker must make it), so
    array code such as kmeans.split_empty_clusters runs unchanged on shards.
    """

    rows: np.ndarray
    start: int
    total: int
    collective: Collective
    chunk_rows: int = 0  # 0: chunks of about `elements` values, see chunks()

    @property
    def shape(self) -> tuple[int, int]:
        return self.total, self.rows.shape[1]

    @property
    def stop(self) -> int:
        return self.start + self.rows.shape[0]

    def chunks(self, elements: int = CHUNK_ELEMENTS) -> Iterator[tuple[int, np.ndarray]]:
        """(local first row, float32 rows) of consecutive blocks of this worker's rows, each of
        chunk_rows rows, or of about `elements` values when chunk_rows is 0."""
        size = self.chunk_rows or max(1, elements // self.rows.shape[1])
        for first in range(0, self.rows.shape[0], size):
            yield first, np.asarray(self.rows[first:first + size], dtype=np.float32)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        local = rows - self.start
        mine = (local >= 0) & (local < self.rows.shape[0])
        gathered = np.zeros((len(rows), self.rows.shape[1]), dtype=np.float32)
        gathered[mine] = self.rows[local[mine]]
        return self.collective.all_reduce_sum(gathered).astype(np.float32)

    def gather(self, local_values: np.ndarray) -> np.ndarray:
        """The per-row integers of all workers as one (N,) int64 array, from each worker's own rows."""
        full = np.zeros(self.total, dtype=np.int64)
        full[self.start:self.stop] = local_values
        return self.collective.all_reduce_sum(full)


@contextlib.contextmanager
def cache_directory(settings: CacheSettings | None) -> Iterator[CacheSettings]:
    """The settings with a new folder of this caller's own inside the given folder (created), or
    float32 caches in a temporary folder; either is removed afterwards."""
    if settings is not None:
        os.makedirs(settings.directory, exist_ok=True)
    parent = settings.directory if settings is not None else None
    folder = tempfile.mkdtemp(prefix="kdc_features_", dir=parent)
    try:
        yield dataclasses.replace(settings, directory=folder) if settings is not None else CacheSettings(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def shard_bounds(num_rows: int, worker: int, workers: int) -> tuple[int, int]:
    """The contiguous rows [start, stop) that worker `worker` of `workers` owns (sizes differ by <= 1)."""
    return num_rows * worker // workers, num_rows * (worker + 1) // workers


def cache_gb(rows: int, dims: Sequence[int], dtype: str) -> float:
    """Disk size in GB (10^9 bytes) of caches of `rows` rows for each width in `dims`."""
    return rows * sum(dims) * np.dtype(dtype).itemsize / 1e9


def clustering_widths(feature_dim: int, pca_dim: int) -> tuple[int, int, int]:
    """Widths of the caches a worker holds at once while clustering: its raw features, their
    reduced rows, and the reduced rows grouped by super-cluster (level 2 of the k-means)."""
    return feature_dim, pca_dim, pca_dim


def check_cache_budget(rows: int, dims: Sequence[int], settings: CacheSettings) -> None:
    """Raises a CacheBudgetError when this worker's caches would exceed the limit (settings.max_gb)."""
    needed = cache_gb(rows, dims, settings.dtype)
    if settings.max_gb and needed > settings.max_gb:
        widths = " + ".join(str(dim) for dim in dims)
        raise CacheBudgetError(f"the feature caches of this worker need {needed:.2f} GB ({rows} rows x "
                          f"({widths}) dims x {settings.dtype}), more than the limit of {settings.max_gb:g} GB; "
                          f"raise the limit, store float16, use more workers or a smaller PCA dimension")


_INFERENCE_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _inference_function(model) -> tf.types.experimental.PolymorphicFunction:
    """The model's float32 inference call as a tf.function, traced once per model and kept, so that
    every clustering after the first runs without tracing (as Keras caches predict's function)."""
    if model not in _INFERENCE_FUNCTIONS:
        held = weakref.ref(model)  # a strong reference in the value would keep the key alive forever
        _INFERENCE_FUNCTIONS[model] = tf.function(lambda batch: tf.cast(held()(batch, training=False), tf.float32),
                                                  reduce_retracing=True)
    return _INFERENCE_FUNCTIONS[model]


def extract_to_cache(model, images: tf.data.Dataset, path: str, rows: int, dtype: str = "float32"
                     ) -> FeatureCache:
    """Runs `model` in inference mode on each batch of `images` and writes its outputs row by row.

    The model is called directly, not through predict, so no replica or worker
    takes part: each worker extracts its own shard, and nothing else is kept in RAM.
    """
    forward = _inference_function(model)
    stage = progress.Stage("clustering: extracting features", rows, "image")
    written = 0
    with contextlib.ExitStack() as stack:
        writer = None
        for batch in images:
            features = forward(batch).numpy()
            if writer is None:
                writer = stack.enter_context(CacheWriter(path, rows, features.shape[1], dtype))
            if written + len(features) <= rows:
                writer.write(features)
            written += len(features)
            stage.update(min(written, rows))
        if writer is None or written != rows:
            raise ValueError(f"expected {rows} feature rows from the dataset, got {written}")
        return writer.finish()
