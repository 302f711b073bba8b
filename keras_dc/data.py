"""tf.data pipelines: the training view with label lookups, and the clustering view.

The label tables (index -> super-cluster, sub-cluster, loss weight) and the
epoch's sampling plan live in host-side variables that the training pipeline
reads when an epoch's iterator starts. The callback swaps them between
epochs, so every batch of an epoch is labelled with that epoch's assignments
and every example carries its stable image index.
"""

from __future__ import annotations

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


def train_view(image: tf.Tensor, image_size: int, seed: tf.Tensor, min_crop_scale: float) -> tf.Tensor:
    """Random resized crop and horizontal flip, drawn from a stateless seed (reproducible)."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=crop_seed,
        min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(min_crop_scale, 1.0),
        use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, size)
    resized = tf.image.resize(tf.cast(crop, tf.float32), (image_size, image_size))
    return tf.image.stateless_random_flip_left_right(resized, flip_seed)


def center_view(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resize the shorter side to image_size * 256/224, then take the centre image_size crop."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    target = round(image_size * CLUSTERING_RESIZE_RATIO)
    scale = target / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), target)
    resized = tf.image.resize(tf.cast(image, tf.float32), new_shape)
    offset = (new_shape - image_size) // 2
    return tf.slice(resized, [offset[0], offset[1], 0], [image_size, image_size, 3])


def training_dataset(source: ImageSource, tables: LabelTables, image_size: int, batch_size: int,
                     rotation: bool, seed: int, min_crop_scale: float, shard: tuple[int, int] = (0, 1)
                     ) -> tf.data.Dataset:
    """One epoch of (image, targets) batches following the plan in `tables`.

    Targets are {"super", "sub", "weight", "index"}. The plan and labels are read
    when the epoch's iterator starts, so a swap between epochs reaches the next one.
    """
    worker, workers = shard
    steps = tables.plan_size // workers // batch_size

    def epoch_plan(_):
        positions = tf.range(tables.plan_size, dtype=tf.int64)
        plan = (positions, tables.plan_indices.read_value(), tables.plan_rotations.read_value())
        epoch = tables.epoch.read_value()
        return tf.data.Dataset.from_tensor_slices(plan).shard(workers, worker).map(
            lambda position, index, rot: (epoch * tables.plan_size + position, index, rot))

    def example(sample_id, index, rot):
        image = train_view(source.load(index), image_size, tf.stack([tf.constant(seed, tf.int64), sample_id]),
                           min_crop_scale)
        image = tf.image.rot90(image, k=rot)
        targets = {
            "super": hierarchy.super_target(tf.gather(tables.super_ids, index), rot, rotation),
            "sub": tf.gather(tables.sub_ids, index),
            "weight": tf.gather(tables.weights, index),
            "index": index,
        }
        return image, targets

    dataset = tf.data.Dataset.from_tensors(0).flat_map(epoch_plan)
    dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return dataset.apply(tf.data.experimental.assert_cardinality(steps)).with_options(_options())


def clustering_dataset(source: ImageSource, image_size: int, batch_size: int,
                       indices: np.ndarray | None = None) -> tf.data.Dataset:
    """All images (or `indices`) in fixed order, centre-cropped, not rotated, for feature extraction."""
    order = np.arange(source.num_images) if indices is None else np.asarray(indices)
    dataset = tf.data.Dataset.from_tensor_slices(order.astype(np.int32))
    dataset = dataset.map(lambda index: center_view(source.load(index), image_size),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(_options())


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options
