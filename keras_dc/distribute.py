"""One factory from a strategy name to a tf.distribute strategy (as in TF Model Garden)."""

from __future__ import annotations

import json
import os

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
