"""One re-clustering: extract features, PCA + hierarchical k-means, and its statistics.

Kept apart from the callback so that it can be tested and benchmarked on its
own. The result is what a cycle saves to disk: assignments, PCA and figures.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
from sklearn import metrics

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

from keras_dc import data, distribute, feature_cache, kmeans
from keras_dc.config import Config
from keras_dc.distributed_pca import NonFiniteFeatures
from keras_dc.feature_cache import CacheSettings, FeatureCache, ShardedFeatures
from keras_dc.sources import ImageSource
from keras_dc.workdir import Assignment, Diverged


def cycle_seed(seed: int, cycle: int, salt: int) -> int:
    """A distinct, reproducible seed for each (run seed, cycle, purpose)."""
    return (seed * 1_000_003 + cycle * 7919 + salt) % (2**31 - 1)


def extract_shard_to_cache(backbone: keras.Model, source: ImageSource, image_size: int, batch_size: int,
                           rows: tuple[int, int], path: str, dtype: str = "float32") -> FeatureCache:
    """Features of images [start, stop) in index order (centre view, no rotation, inference mode),
    written to a cache file instead of RAM."""
    images = data.clustering_dataset(source, image_size, batch_size, np.arange(*rows))
    return feature_cache.extract_to_cache(backbone, images, path, rows[1] - rows[0], dtype)


def recluster(backbone: keras.Model, source: ImageSource, config: Config, cycle: int,
              previous: Assignment | None, log: Callable[[str], None] = print,
              collective: distribute.Collective | None = None, cache: CacheSettings | None = None) -> Assignment:
    """Runs cycle steps 1-5 of docs/method.md and measures the result. Each worker of `collective`
    extracts and caches its shard of the images; all workers return the same assignment."""
    start = time.perf_counter()
    if config.k == 1:
        zeros = np.zeros(source.num_images, np.int32)
        return Assignment(zeros, zeros, {"recluster_seconds": 0.0})
    collective = collective or distribute.Collective()
    rows = feature_cache.shard_bounds(source.num_images, collective.worker, collective.workers)
    with feature_cache.cache_directory(cache) as settings:
        widths = feature_cache.clustering_widths(backbone.output_shape[-1], config.pca_dim)
        feature_cache.check_cache_budget(rows[1] - rows[0], widths, settings)
        prefix = os.path.join(settings.directory, f"worker_{collective.worker}")
        raw = extract_shard_to_cache(backbone, source, config.image_size, config.batch_size, rows,
                                     prefix + "_raw.npy", settings.dtype)
        extract_seconds = time.perf_counter() - start
        try:
            result, pca, timings = kmeans.cluster_features(
                ShardedFeatures(raw.array, rows[0], source.num_images, collective), config.k,
                config.super_clusters, config.pca_dim, config.kmeans_iters, cycle_seed(config.seed, cycle, 1),
                prefix + "_reduced.npy", pca_sample=config.pca_sample or None, dtype=settings.dtype, log=log)
        except NonFiniteFeatures as error:
            raise Diverged(f"{error} at the clustering of cycle {cycle}; nothing of it was saved") from None
        finally:
            raw.remove()
    assignment = Assignment(result.super_ids, result.sub_ids, {}, pca)
    assignment.stats = assignment_stats(assignment, config, source.labels, previous)
    assignment.stats.update(recluster_seconds=time.perf_counter() - start, extract_seconds=extract_seconds,
                            kmeans_objective=float(result.objective), empty_split=int(result.empty_split),
                            pca_seconds=timings["pca_s"], kmeans_seconds=timings["kmeans_s"])
    return assignment


def summary_line(cycle: int, stats: dict) -> str:
    """The one log line of a clustering: seconds per stage, k-means objective, NMI with the previous
    cycle and with the labels (when known), empty clusters split. The rest goes to TensorBoard."""
    if "kmeans_objective" not in stats:
        return f"clustering: cycle {cycle}: k=1, every image in one cluster"
    parts = [f"extract {stats['extract_seconds']:.2f} s, PCA {stats['pca_seconds']:.2f} s, "
             f"k-means {stats['kmeans_seconds']:.2f} s", f"objective {stats['kmeans_objective']:.5g}"]
    parts += [f"NMI vs {name} {stats[key]:.3f}" for key, name in (("cluster_nmi_prev", "previous"),
                                                                  ("cluster_nmi_labels", "labels")) if key in stats]
    return f"clustering: cycle {cycle}: {', '.join(parts)}, {stats['empty_split']} empty clusters split"


def assignment_stats(assignment: Assignment, config: Config, labels: np.ndarray | None,
                     previous: Assignment | None) -> dict:
    """Cluster sizes, stability (NMI with the previous cycle) and, with labels, NMI/ARI vs labels."""
    ids = assignment.cluster_ids(config.sub_classes)
    sizes = np.bincount(ids, minlength=config.k)
    stats = {"cluster_size_min": int(sizes.min()), "cluster_size_max": int(sizes.max()),
             "clusters_empty": int((sizes == 0).sum())}
    if previous is not None:
        stats["cluster_nmi_prev"] = float(metrics.normalized_mutual_info_score(
            previous.cluster_ids(config.sub_classes), ids))
    if labels is not None:
        stats["cluster_nmi_labels"] = float(metrics.normalized_mutual_info_score(labels, ids))
        stats["cluster_ari_labels"] = float(metrics.adjusted_rand_score(labels, ids))
    return stats
