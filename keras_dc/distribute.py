"""tf.distribute plumbing: the strategy factory (as in TF Model Garden), the worker's place in the
cluster, a numpy all-reduce over TF collectives, and what Keras needs to fit on several workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np
import tensorflow as tf


def get_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """auto: multi-worker under a TF_CONFIG with several workers, mirrored over 2+ devices, else default."""
    if name == "auto":
        name = "multi_worker" if _cluster_size() > 1 else ("mirrored" if len(_replica_devices()) > 1 else "default")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(_replica_devices()[0])
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(_replica_devices())
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}")


def _replica_devices() -> list[str]:
    """All GPUs, or the logical CPUs when there is no GPU (tests configure 2 of them)."""
    gpus = tf.config.list_logical_devices("GPU")
    return [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]


def _cluster_size() -> int:
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    cluster = config.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes checkpoints, logs and exports in a multi-worker run."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                              and "chief" not in resolver.cluster_spec().as_dict())


def worker_position(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """(index, count) of this process among the cluster's tasks, chief first as in TF; (0, 1) alone."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 0, 1
    cluster = resolver.cluster_spec().as_dict()
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    index = 0 if resolver.task_type == "chief" else chiefs + int(resolver.task_id)
    return index, chiefs + workers


class Collective:
    """Sums numpy arrays over all workers with the strategy's own collectives (an all-reduce).

    Every worker must make the same calls in the same order. With one replica in
    sync it is the identity, so the same algorithm runs unchanged in one process.
    """

    def __init__(self, strategy: tf.distribute.Strategy | None = None):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.worker, self.workers = worker_position(self.strategy)
        self._first_local_replica = min(self._local_replica_ids())
        self._reducers: dict[tf.DType, tf.types.experimental.PolymorphicFunction] = {}

    def _local_replica_ids(self) -> list[int]:
        ids: list[int] = []
        self.strategy.experimental_distribute_values_from_function(
            lambda context: ids.append(int(context.replica_id_in_sync_group)) or tf.constant(0))
        return ids

    def all_reduce_sum(self, array: np.ndarray) -> np.ndarray:
        """Elementwise sum of `array` over the workers: floats as float64, integers as int64."""
        array = np.asarray(array)
        dtype = np.float64 if np.issubdtype(array.dtype, np.floating) else np.int64
        if self.strategy.num_replicas_in_sync == 1:
            return array.astype(dtype)
        reducer = self._reducer(tf.as_dtype(dtype))
        return reducer(tf.constant(array.reshape(-1), dtype)).numpy().reshape(array.shape)

    def broadcast(self, array: np.ndarray) -> np.ndarray:
        """Worker 0's `array` on every worker (same dtype), so that all use one copy of a result."""
        array = np.asarray(array)
        mine = array if self.worker == 0 else np.zeros_like(array)
        return self.all_reduce_sum(mine).astype(array.dtype)

    def _reducer(self, dtype: tf.DType):
        """A traced all-reduce of a flat vector; only the first local replica contributes the value."""
        if dtype not in self._reducers:
            def replica_sum(vector):
                context = tf.distribute.get_replica_context()
                mine = tf.equal(context.replica_id_in_sync_group, self._first_local_replica)
                return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.where(mine, vector, tf.zeros_like(vector)))

            @tf.function(input_signature=[tf.TensorSpec([None], dtype)])
            def reduce(vector):
                summed = self.strategy.run(replica_sum, args=(vector,))
                return self.strategy.experimental_local_results(summed)[0]

            self._reducers[dtype] = reduce
        return self._reducers[dtype]


def in_multi_worker_mode(strategy: tf.distribute.Strategy) -> bool:
    """True under a MultiWorkerMirroredStrategy whose cluster has more than one task."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and worker_position(strategy)[1] > 1


@contextlib.contextmanager
def keras_fit_context(model, strategy: tf.distribute.Strategy) -> Iterator[None]:
    """Makes Keras 3.15 `fit` work on several workers (keras-team/keras#20585); a no-op otherwise.

    In multi-worker mode Keras all-reduces the first (x, y) batch as if it were one
    tensor to build the model symbolically, and reduces scalar step outputs along
    axis 0; both fail. Inside this context that build is skipped (the model is
    built at construction) and train_step outputs are reshaped to rank 1; epoch
    logs still come from the metrics' variables, reduced over all workers.
    """
    if not in_multi_worker_mode(strategy):
        yield
        return
    train_step = model.train_step
    # Private: no public Keras API skips fit's symbolic build, which breaks here (the issue above).
    # tests/test_model.py::test_private_keras_apis_still_exist fails loudly if Keras renames it.
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    model.train_step = lambda data: {name: tf.reshape(value, [1]) for name, value in train_step(data).items()}
    model.train_function = None
    try:
        yield
    finally:
        del model._maybe_symbolic_build, model.train_step
        model.train_function = None


@contextlib.contextmanager
def checkpoint_write_dir(workdir: str, chief: bool) -> Iterator[str]:
    """Where this worker writes checkpoints: the workdir for the chief, a temporary folder removed
    afterwards for the others (TF's rule for saving under MultiWorkerMirroredStrategy)."""
    if chief:
        yield workdir
        return
    folder = tempfile.mkdtemp(prefix="kdc_worker_checkpoints_")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
