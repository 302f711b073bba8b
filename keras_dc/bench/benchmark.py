"""Measurements behind tools/benchmark.py, each as a ratio to a reference run in the same process.

A ratio cancels most of the noise of a shared machine: both sides of it are
measured back to back, on the same data, with the same threads.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

from keras_dc import backbones, data, hierarchy, kmeans, reclustering, sampling, train
from keras_dc.config import Config
from keras_dc.distribute import Collective
from keras_dc.feature_cache import CacheWriter, ShardedFeatures
from keras_dc.sources import ImageSource, synthetic_source


ROUNDS = 3  # alternating rounds of the step measurements (2 still let a burst of the neighbours through)


class StepTimer(keras.callbacks.Callback):
    """Images per second of the best epoch after the first (warm-up), each timed after `skip` batches.

    The best of several epochs is the rate the code sustains when the shared machine lets it; a
    mean would measure the neighbours too.
    """

    def __init__(self, batch_size: int, skip: int = 2):
        super().__init__()
        self.batch_size = batch_size
        self.skip = skip
        self.times: list[float] = []
        self.rates: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.times = []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        timed = self.times[min(self.skip, len(self.times) - 2):]
        self.rates.append((len(timed) - 1) * self.batch_size / (timed[-1] - timed[0]))

    @property
    def images_per_second(self) -> float:
        return max(self.rates[1:] or self.rates)


def forward_flops(model: keras.Model) -> int:
    """Multiply-adds x 2 of the convolutions and dense layers of one forward pass of one image."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel_h, kernel_w, channels_in, channels_out = layer.kernel.shape
            _, height, width, _ = layer.output.shape
            total += 2 * height * width * channels_out * channels_in * kernel_h * kernel_w
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
    return int(total)


def matmul_flops_per_second(size: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
    """Dense float32 matmul throughput of this machine: the yardstick of utilisation."""
    a = tf.random.uniform([size, size], dtype=dtype)
    b = tf.random.uniform([size, size], dtype=dtype)
    product = tf.function(lambda: tf.linalg.matmul(a, b))
    product().numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        result = product()
    result.numpy()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def _fit_rate(model: keras.Model, dataset: tf.data.Dataset, batch_size: int, epochs: int = 2,
              callbacks: list | None = None) -> float:
    timer = StepTimer(batch_size)
    model.fit(dataset, epochs=epochs, verbose=0, callbacks=[timer, *(callbacks or [])])
    return timer.images_per_second


def _plan_callback(tables: data.LabelTables, num_images: int, seed: int) -> keras.callbacks.Callback:
    """Draws a fresh shuffled plan with random rotations before each epoch, as training does
    with --sampling=none."""
    cluster_ids = np.zeros(num_images, np.int64)

    class Plan(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            indices, rotations = sampling.epoch_plan("none", cluster_ids, 1, num_images, seed, epoch, rotation=True)
            tables.set_plan(indices, rotations, epoch)

    return Plan()


def plain_keras_model(config: Config) -> keras.Model:
    """The reference: the same backbone with two ordinary dense heads, compiled the standard way."""
    backbone = backbones.build_backbone(config.arch, config.image_size, seed=config.seed)
    image = keras.Input(backbone.input_shape[1:])
    features = keras.layers.ReLU()(backbone(image))
    outputs = {"super": keras.layers.Dense(config.super_classes, name="super")(features),
               "sub": keras.layers.Dense(config.sub_classes, name="sub")(features)}
    model = keras.Model(image, outputs)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.SGD(config.lr, momentum=config.momentum), loss={"super": loss, "sub": loss})
    return model


def _dc_setup(config: Config, source: ImageSource, steps: int):
    """A DeeperCluster model, its real training pipeline (random labels) and the plan callback."""
    tables = data.LabelTables(source.num_images, source.num_images)
    rng = np.random.default_rng(0)
    tables.set_assignments(rng.integers(0, config.super_clusters, source.num_images),
                           rng.integers(0, config.sub_classes, source.num_images), np.ones(source.num_images))
    real = data.training_dataset(source, tables, config.image_size, config.batch_size, config.rotation,
                                 config.seed, config.min_crop_scale).take(steps)
    return train.build_model(config), real, _plan_callback(tables, source.num_images, config.seed)


def _cached(dataset: tf.data.Dataset, steps: int, keys: tuple[str, ...] | None = None) -> tf.data.Dataset:
    """One batch of `dataset`, kept in memory and repeated: the input pipeline taken out of the step."""
    images, targets = next(iter(dataset))
    if keys:
        targets = {key: targets[key] for key in keys}
    return tf.data.Dataset.from_tensors((images, targets)).repeat(steps)


def train_step_figures(config: Config, source: ImageSource, steps: int) -> dict[str, float]:
    """DeeperCluster step on the real pipeline, on a cached batch, and a plain Keras step."""
    model, real, plan = _dc_setup(config, source, steps)
    plain = plain_keras_model(config)
    runs = [(model, real, [plan]), (model, _cached(real, steps), []),
            (plain, _cached(real, steps, ("super", "sub")), [])]
    real_rate, cached_rate, plain_rate = 0.0, 0.0, 0.0
    for _ in range(ROUNDS):  # alternating, so that all three meet the same moments of a shared machine
        rates = [_fit_rate(network, dataset, config.batch_size, callbacks=extra)
                 for network, dataset, extra in runs]
        real_rate, cached_rate, plain_rate = (max(pair) for pair in zip((real_rate, cached_rate, plain_rate), rates))
    flops = 3 * forward_flops(model.backbone)
    return {"dc_images_per_s": real_rate, "dc_cached_images_per_s": cached_rate,
            "plain_keras_images_per_s": plain_rate, "train_flops_per_image": float(flops),
            "achieved_flops_per_s": flops * real_rate}


def _best_seconds(*runs: Callable[[], object], repeats: int = 5) -> list[float]:
    """The shortest of `repeats` timings of each run, the runs alternating so that both see the
    same moments of a shared machine."""
    best = [math.inf] * len(runs)
    for _ in range(repeats):
        for position, run in enumerate(runs):
            start = time.perf_counter()
            run()
            best[position] = min(best[position], time.perf_counter() - start)
    return best


def extraction_figures(backbone: keras.Model, source: ImageSource, image_size: int, batch_size: int
                       ) -> dict[str, float]:
    """The clustering pass as training runs it (pipeline, forward pass, rows into the disk cache)
    against predict on the same views already in memory."""
    views = np.concatenate([batch.numpy() for batch in data.clustering_dataset(source, image_size, batch_size)])
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "features.npy")
        extract = functools.partial(reclustering.extract_shard_to_cache, backbone, source, image_size, batch_size,
                                    (0, source.num_images), path)
        predict = functools.partial(backbone.predict, views, batch_size=batch_size, verbose=0)
        predict_s, extract_s = _best_seconds(predict, extract)
    return {"extraction_images_per_s": source.num_images / extract_s,
            "predict_images_per_s": source.num_images / predict_s}


def bare_faiss_clustering(features: np.ndarray, k: int, m: int, pca_dim: int, niter: int, seed: int) -> None:
    """The same work done with faiss alone: PCA, L2, k-means at both levels, final assignments."""
    import faiss

    pca = faiss.PCAMatrix(features.shape[1], pca_dim, -0.5)
    pca.train(features)
    reduced = pca.apply(features)
    faiss.normalize_L2(reduced)
    super_ids = faiss_kmeans_assign(reduced, m, niter, seed)
    for s in range(m):
        rows = reduced[super_ids == s]
        faiss_kmeans_assign(rows, hierarchy.sub_classes(k, m), niter, seed + 1 + s)


def faiss_kmeans_assign(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    """Bare faiss.Kmeans on all of x (no subsampling), then each row's nearest centroid."""
    import faiss

    if k == 1:
        return np.zeros(len(x), np.int64)
    kmeans = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, min_points_per_centroid=1,
                          max_points_per_centroid=10**9)
    kmeans.train(x)
    return kmeans.index.search(x, 1)[1].ravel()


def clustering_figures(num_points: int, dim: int, k: int, m: int, pca_dim: int, niter: int
                       ) -> dict[str, float]:
    """keras-dc's clustering as training runs it (features in a disk cache, PCA + hierarchical k-means
    in one process) against bare faiss on the same features in RAM."""
    features = np.random.default_rng(0).normal(size=(num_points, dim)).astype(np.float32)
    features[:, : dim // 4] += np.random.default_rng(1).integers(0, 8, (num_points, 1)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        with CacheWriter(os.path.join(folder, "features.npy"), num_points, dim) as writer:
            writer.write(features)
            cache = writer.finish()
        ours = functools.partial(kmeans.cluster_features,
                                 ShardedFeatures(cache.array, 0, num_points, Collective()), k, m, pca_dim, niter, 0,
                                 os.path.join(folder, "reduced.npy"))
        bare = functools.partial(bare_faiss_clustering, features, k, m, pca_dim, niter, 0)
        ours_s, faiss_s = _best_seconds(ours, bare)
    return {"clustering_s": ours_s, "bare_faiss_s": faiss_s}


def cycle_figures(config: Config, source: ImageSource) -> dict[str, float]:
    """One whole re-clustering against one training epoch on the same data."""
    model = train.build_model(config)
    tables = data.LabelTables(source.num_images, source.num_images)
    dataset = data.training_dataset(source, tables, config.image_size, config.batch_size, config.rotation,
                                    config.seed, config.min_crop_scale)
    model.fit(dataset, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0)
    epoch_s = time.perf_counter() - start
    start = time.perf_counter()
    reclustering.recluster(model.backbone, source, config, 0, None, log=lambda line: None)
    return {"epoch_s": epoch_s, "recluster_s": time.perf_counter() - start}


def precision_figures(config: Config, steps: int) -> dict[str, float]:
    """float32 against mixed_bfloat16 images/s of the DeeperCluster step on a cached batch, the
    best of alternating rounds (each model is built under its policy, then both train in turn)."""
    source = synthetic_source(config.batch_size * (steps + 1), config.image_size)
    runs = {}
    for precision in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(precision)
        model, real, _ = _dc_setup(config, source, steps)
        runs[precision] = model, _cached(real, steps)
    keras.mixed_precision.set_global_policy("float32")
    rates = dict.fromkeys(runs, 0.0)
    for _ in range(ROUNDS):
        for precision, (model, dataset) in runs.items():
            rates[precision] = max(rates[precision], _fit_rate(model, dataset, config.batch_size))
    return {"float32_images_per_s": rates["float32"], "bf16_images_per_s": rates["mixed_bfloat16"]}
