"""tf.data pipelines: the training view with label lookups, and the clustering view.

The label tables (index -> super-cluster, sub-cluster, loss weight) and the
epoch's sampling plan live in host-side variables that the training pipeline
reads when an epoch's iterator starts. The callback swaps them between
epochs, so every batch of an epoch is labelled with that epoch's assignments
and every example carries its stable image index.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from keras_dc import hierarchy
from keras_dc.sources import ImageSource

CLUSTERING_RESIZE_RATIO = 256 / 224  # resize then centre-crop, as the reference's clustering view


class LabelTables:
    """Host variables that the training pipeline reads: assignments, weights and the epoch plan."""

    def __init__(self, num_images: int, plan_size: int):
        with tf.device("/cpu:0"):
            self.super_ids = tf.Variable(tf.zeros([num_images], tf.int32), trainable=False, name="super_ids")
            self.sub_ids = tf.Variable(tf.zeros([num_images], tf.int32), trainable=False, name="sub_ids")
            self.weights = tf.Variable(tf.ones([num_images], tf.float32), trainable=False, name="weights")
            self.plan_indices = tf.Variable(tf.range(plan_size, dtype=tf.int32) % num_images,
                                            trainable=False, name="plan_indices")
            self.plan_rotations = tf.Variable(tf.zeros([plan_size], tf.int32), trainable=False,
                                              name="plan_rotations")
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.num_images = num_images
        self.plan_size = plan_size

    def set_assignments(self, super_ids: np.ndarray, sub_ids: np.ndarray, weights: np.ndarray) -> None:
        self.super_ids.assign(super_ids.astype(np.int32))
        self.sub_ids.assign(sub_ids.astype(np.int32))
        self.weights.assign(weights.astype(np.float32))

    def set_plan(self, indices: np.ndarray, rotations: np.ndarray, epoch: int) -> None:
        self.plan_indices.assign(indices.astype(np.int32))
        self.plan_rotations.assign(rotations.astype(np.int32))
        self.epoch.assign(epoch)


def crop_boxes(seed: tf.Tensor, aspects: tf.Tensor, min_crop_scale: float) -> tf.Tensor:
    """Random resized crop boxes (y1, x1, y2, x2 in [0, 1]) for images of width/height `aspects` (B,).

    Each box has a pixel aspect ratio in [3/4, 4/3] whatever the image's shape, so no view is
    ever squashed. Its area is a fraction in [min_crop_scale, 1] of the image: the drawn ratio
    is moved into the range where that area fits (no retries); if none does (an elongated
    image and a large area), the box is shrunk to fit, its aspect kept, as torch falls back to.
    """
    uniform = tf.random.stateless_uniform([tf.shape(aspects)[0], 4], seed)
    area = min_crop_scale + (1.0 - min_crop_scale) * uniform[:, 0]
    ratio = tf.exp(math.log(3 / 4) + math.log(16 / 9) * uniform[:, 1])
    ratio = tf.clip_by_value(tf.clip_by_value(ratio, area * aspects, aspects / area), 3 / 4, 4 / 3)
    width, height = tf.sqrt(area * ratio / aspects), tf.sqrt(area * aspects / ratio)
    fit = tf.minimum(1.0, 1.0 / tf.maximum(width, height))
    width, height = width * fit, height * fit
    left, top = uniform[:, 2] * (1.0 - width), uniform[:, 3] * (1.0 - height)
    return tf.stack([top, left, top + height, left + width], axis=1)


def random_crops(images: tf.Tensor, image_size: int, seed: tf.Tensor, min_crop_scale: float) -> tf.Tensor:
    """Random resized crops (float32, image_size square) of a batch of same-sized images, or of one image."""
    batched = images.shape.rank == 4
    images = tf.cast(images if batched else images[None], tf.float32)
    shape = tf.cast(tf.shape(images), tf.float32)
    aspects = tf.fill([tf.shape(images)[0]], shape[2] / shape[1])
    boxes = crop_boxes(seed, aspects, min_crop_scale)
    views = tf.image.crop_and_resize(images, boxes, tf.range(tf.shape(images)[0]), (image_size, image_size))
    return views if batched else views[0]


def flip_and_rotate(views: tf.Tensor, rotations: tf.Tensor, seed: tf.Tensor, flip: bool = True) -> tf.Tensor:
    """Horizontal flip (if `flip`, with probability 1/2), then each square view's rotation, in one gather."""
    batch, image_size = tf.shape(views)[0], views.shape[1]
    flips = tf.cast(tf.random.stateless_uniform([batch], seed) < (0.5 if flip else 0.0), tf.int32)
    transform = tf.gather(dihedral_index_maps(image_size), flips * hierarchy.NUM_ROTATIONS + rotations)
    pixels = tf.reshape(views, [batch, image_size * image_size, 3])
    return tf.reshape(tf.gather(pixels, transform, batch_dims=1), [batch, image_size, image_size, 3])


def dihedral_index_maps(size: int) -> tf.Tensor:
    """Pixel index maps of the 8 flips x quarter-turns of a square image (flip first, as np.rot90(x[:, ::-1])).

    Applying them with one batched gather is several times cheaper than per-example
    tf.image.rot90 and tf.where selections.
    """
    grid = np.arange(size * size, dtype=np.int32).reshape(size, size)
    maps = [np.rot90(grid[:, ::-1] if flip else grid, turns).ravel()
            for flip in (False, True) for turns in range(hierarchy.NUM_ROTATIONS)]
    return tf.constant(np.stack(maps))


def center_view(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resize the shorter side to image_size * 256/224, then take the centre image_size crop.

    Works on one image (H, W, C) or on a batch of same-sized images (B, H, W, C).
    """
    shape = tf.cast(tf.shape(image)[-3:-1], tf.float32)
    target = round(image_size * CLUSTERING_RESIZE_RATIO)
    scale = target / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), target)
    resized = tf.image.resize(tf.cast(image, tf.float32), new_shape)
    offset = (new_shape - image_size) // 2
    return tf.image.crop_to_bounding_box(resized, offset[0], offset[1], image_size, image_size)


def training_dataset(source: ImageSource, tables: LabelTables, image_size: int, batch_size: int,
                     rotation: bool, seed: int, min_crop_scale: float, flip: bool = True,
                     shard: tuple[int, int] = (0, 1), skip_batches: int = 0) -> tf.data.Dataset:
    """One epoch of (image, targets) batches following the plan in `tables`, less its first
    `skip_batches` (an epoch resumed mid-way: skipped in the plan, so no skipped image is read).

    Targets are {"super", "sub", "weight", "index"}. The plan and labels are read
    when the epoch's iterator starts, so a swap between epochs reaches the next one.
    """
    worker, workers = shard
    steps = tables.plan_size // workers // batch_size - skip_batches
    max_side = round(image_size / math.sqrt(min_crop_scale))

    def epoch_plan(_):
        plan = (tf.range(tables.plan_size, dtype=tf.int64), tables.plan_indices.read_value(),
                tables.plan_rotations.read_value())
        return tf.data.Dataset.from_tensor_slices(plan).shard(workers, worker).skip(skip_batches * batch_size)

    def example_seed(position):
        return tf.stack([tf.constant(seed, tf.int64), tables.epoch * tables.plan_size + position])

    def cropped_example(position, index, rotation):
        crop_seed = tf.random.experimental.stateless_split(example_seed(position), 2)[0]
        image, found = source.load_checked(index)
        crop = random_crops(bounded_image(image, max_side), image_size, crop_seed, min_crop_scale)
        return position, index, rotation, crop, found

    def cropped_batch(positions, indices, rotations):
        crop_seed = tf.random.experimental.stateless_split(example_seed(positions[0]), 2)[0]
        crops = random_crops(source.load(indices), image_size, crop_seed, min_crop_scale)
        return positions, indices, rotations, crops, tf.ones_like(indices, tf.bool)

    def labelled_batch(positions, indices, rotations, crops, found):
        """Labels from the tables; an image that could not be read is weighted 0, so it teaches nothing."""
        flip_seed = tf.random.experimental.stateless_split(example_seed(positions[0]), 2)[1]
        targets = {
            "super": hierarchy.super_target(tf.gather(tables.super_ids, indices), rotations, rotation),
            "sub": tf.gather(tables.sub_ids, indices),
            "weight": tf.gather(tables.weights, indices) * tf.cast(found, tf.float32),
            "index": indices,
        }
        return flip_and_rotate(crops, rotations, flip_seed, flip), targets

    dataset = tf.data.Dataset.from_tensors(0).flat_map(epoch_plan)
    if source.same_size:  # in memory and one size: crop whole batches, no per-example work
        dataset = dataset.batch(batch_size, drop_remainder=True).map(cropped_batch)
    else:  # each image cropped from its own shape, then batched
        dataset = dataset.map(cropped_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(labelled_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.take(steps).prefetch(tf.data.AUTOTUNE)  # shards may differ by one batch
    return dataset.apply(tf.data.experimental.assert_cardinality(steps)).with_options(_options())


def distributed_training_dataset(strategy: tf.distribute.Strategy, make: Callable[..., tf.data.Dataset],
                                 global_batch_size: int, skip_steps: int = 0) -> tf.distribute.DistributedDataset:
    """What `make(batch_size=, shard=, skip_batches=)` builds (training_dataset with its other arguments
    bound), once per input pipeline: each reads its own shard of the epoch plan in per-replica batches,
    so that a step consumes global_batch_size distinct examples; the first `skip_steps` steps are skipped
    (a step takes one batch per local replica from its pipeline)."""
    def pipeline(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
        return make(batch_size=context.get_per_replica_batch_size(global_batch_size),
                    shard=(context.input_pipeline_id, context.num_input_pipelines),
                    skip_batches=skip_steps * local_replicas)

    return strategy.distribute_datasets_from_function(pipeline)


def bounded_image(image: tf.Tensor, max_side: int) -> tf.Tensor:
    """`image` shrunk (aspect kept, antialiased) so that its shorter side is at most `max_side`.

    Bounds the memory and the work of decoding large photos; a crop of the smallest area
    still has about image_size pixels a side, so nothing is lost to upsampling.
    """
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.minimum(1.0, max_side / tf.reduce_min(shape))
    size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
    return tf.cond(scale < 1.0, lambda: tf.image.resize(image, size, antialias=True),
                   lambda: tf.cast(image, tf.float32))


def clustering_dataset(source: ImageSource, image_size: int, batch_size: int,
                       indices: np.ndarray | None = None) -> tf.data.Dataset:
    """All images (or `indices`) in fixed order, centre-cropped, not rotated, for feature extraction.

    Same-sized in-memory images are viewed a whole batch at a time, others one by one.
    """
    order = np.arange(source.num_images) if indices is None else np.asarray(indices)
    dataset = tf.data.Dataset.from_tensor_slices(order.astype(np.int32))
    view = lambda index: center_view(source.load(index), image_size)  # noqa: E731
    if source.same_size:
        dataset = dataset.batch(batch_size).map(view, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        dataset = dataset.map(view, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options
