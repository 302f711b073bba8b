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
MIN_ASPECT, MAX_ASPECT = 3 / 4, 4 / 3  # of the random resized crop, as torchvision's RandomResizedCrop
CROP_TRIES = 10  # draws of a crop box before the centre crop, as torchvision


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


def crop_boxes(seed: tf.Tensor, heights: tf.Tensor, widths: tf.Tensor, min_crop_scale: float) -> tf.Tensor:
    """torchvision's RandomResizedCrop boxes (top, left, height, width in pixels, float32) for images of
    `heights` x `widths` pixels (B,).

    As RandomResizedCrop.get_params: up to CROP_TRIES draws of an area uniform in [min_crop_scale, 1] of
    the image and an aspect log-uniform in [3/4, 4/3], sides rounded to pixels; the first draw that fits
    is placed uniformly; if none fits, the centre crop of the image's aspect clipped into [3/4, 4/3].
    The draws are made all at once, so a batch costs a few vector operations.
    """
    batch = tf.shape(heights)[0]
    heights, widths = tf.cast(heights, tf.float32), tf.cast(widths, tf.float32)
    draw_seed, place_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    uniform = tf.random.stateless_uniform([batch, CROP_TRIES, 2], draw_seed)
    area = (heights * widths)[:, None] * (min_crop_scale + (1.0 - min_crop_scale) * uniform[..., 0])
    ratio = tf.exp(math.log(MIN_ASPECT) + (math.log(MAX_ASPECT) - math.log(MIN_ASPECT)) * uniform[..., 1])
    width, height = tf.round(tf.sqrt(area * ratio)), tf.round(tf.sqrt(area / ratio))
    fits = (width > 0) & (height > 0) & (width <= widths[:, None]) & (height <= heights[:, None])
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    drawn = tf.reduce_any(fits, axis=1)
    aspect = widths / heights
    fallback_width = tf.where(aspect < MIN_ASPECT, widths,
                              tf.where(aspect > MAX_ASPECT, tf.round(heights * MAX_ASPECT), widths))
    fallback_height = tf.where(aspect < MIN_ASPECT, tf.round(widths / MIN_ASPECT), heights)
    width = tf.where(drawn, tf.gather(width, first, batch_dims=1), fallback_width)
    height = tf.where(drawn, tf.gather(height, first, batch_dims=1), fallback_height)
    place = tf.random.stateless_uniform([batch, 2], place_seed)
    top = tf.where(drawn, tf.floor(place[:, 0] * (heights - height + 1)), tf.floor((heights - height) / 2))
    left = tf.where(drawn, tf.floor(place[:, 1] * (widths - width + 1)), tf.floor((widths - width) / 2))
    return tf.stack([top, left, height, width], axis=1)


def resized_boxes(images: tf.Tensor, boxes: tf.Tensor, size: int) -> tf.Tensor:
    """The pixel `boxes` (top, left, height, width) of a batch of same-sized images, each resized to `size`
    square with antialiasing (float32).

    Each output pixel is the mean of s x s bilinear samples spread over its footprint in the image, s the
    largest shrink factor of the batch rounded up: a box filter as wide as the output pixel, so a crop
    several times larger than its view is averaged, not point-sampled (PIL's antialiased resize, as in
    the reference's RandomResizedCrop, weighs the same footprint with a tent). Samples sit at pixel
    centres; the outermost ones of an enlarged box are clamped into the image (no black border).
    """
    shape = tf.cast(tf.shape(images)[1:3], tf.float32)
    samples = tf.maximum(tf.cast(tf.math.ceil(tf.reduce_max(boxes[:, 2:]) / size - 1e-3), tf.int32), 1)
    side = size * samples
    top, left, height, width = tf.unstack(boxes, axis=1)
    step_y, step_x = height / tf.cast(side, tf.float32), width / tf.cast(side, tf.float32)
    last = tf.maximum(shape - 1.0, 1.0)  # crop_and_resize maps a coordinate c to c * (side - 1) pixels
    y1 = tf.maximum(top - 0.5 + 0.5 * step_y, 0.0) / last[0]
    x1 = tf.maximum(left - 0.5 + 0.5 * step_x, 0.0) / last[1]
    y2 = tf.minimum(top + height - 0.5 - 0.5 * step_y, shape[0] - 1.0) / last[0]
    x2 = tf.minimum(left + width - 0.5 - 0.5 * step_x, shape[1] - 1.0) / last[1]
    batch = tf.shape(images)[0]
    corners = tf.stack([y1, x1, y2, x2], axis=1)  # float images: crop_and_resize is slower on uint8
    dense = tf.image.crop_and_resize(tf.cast(images, tf.float32), corners, tf.range(batch), tf.stack([side, side]))
    dense = tf.reshape(dense, [batch, size, samples, size, samples, tf.shape(images)[3]])
    return tf.reduce_mean(dense, axis=[2, 4])


def resized_crop(image: tf.Tensor, box: tf.Tensor, size: int) -> tf.Tensor:
    """One image's pixel `box` (top, left, height, width) resized to `size` square (float32), antialiased
    with PIL's filter (tf.image.resize's antialias): what torchvision's RandomResizedCrop does to a photo.

    A box no larger than its view is only interpolated (PIL's filter is then plain bilinear), by the
    cheaper batch path: the antialiased resize costs more than the crop itself on small images.
    """
    def shrunk():
        top, left, height, width = tf.unstack(tf.cast(box, tf.int32))
        crop = tf.slice(image, tf.stack([top, left, 0]), tf.stack([height, width, -1]))
        return tf.image.resize(tf.cast(crop, tf.float32), (size, size), antialias=True)

    return tf.cond(tf.reduce_max(box[2:]) > size, shrunk, lambda: resized_boxes(image[None], box[None], size)[0])


def random_crops(images: tf.Tensor, image_size: int, seed: tf.Tensor, min_crop_scale: float) -> tf.Tensor:
    """Random resized crops (float32, image_size square) of a batch of same-sized images, or of one image
    (then cut out and resized alone, which costs in proportion to the crop, however large the photo)."""
    batched = len(images.shape) == 4
    shape = tf.shape(images)
    count = shape[0] if batched else 1
    boxes = crop_boxes(seed, tf.fill([count], shape[-3]), tf.fill([count], shape[-2]), min_crop_scale)
    return resized_boxes(images, boxes, image_size) if batched else resized_crop(images, boxes[0], image_size)


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
    """Resize the shorter side to image_size * 256/224 (antialiased, as PIL's in the reference's
    Resize(256)), then take the centre image_size crop.

    Works on one image (H, W, C) or on a batch of same-sized images (B, H, W, C).
    """
    shape = tf.cast(tf.shape(image)[-3:-1], tf.float32)
    target = round(image_size * CLUSTERING_RESIZE_RATIO)
    scale = target / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), target)
    resized = tf.image.resize(tf.cast(image, tf.float32), new_shape, antialias=True)
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

    def epoch_plan(_):
        plan = (tf.range(tables.plan_size, dtype=tf.int64), tables.plan_indices.read_value(),
                tables.plan_rotations.read_value())
        return tf.data.Dataset.from_tensor_slices(plan).shard(workers, worker).skip(skip_batches * batch_size)

    def example_seed(position):
        return tf.stack([tf.constant(seed, tf.int64), tables.epoch * tables.plan_size + position])

    def cropped_example(position, index, rotation):
        crop_seed = tf.random.experimental.stateless_split(example_seed(position), 2)[0]
        image, found = source.load_checked(index)
        crop = random_crops(image, image_size, crop_seed, min_crop_scale)
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
                                 global_batch_size: int, shard: tuple[int, int] | None = None, skip_steps: int = 0
                                 ) -> tf.distribute.DistributedDataset:
    """What `make(batch_size=, shard=, skip_batches=)` builds (training_dataset with its other arguments
    bound), once per input pipeline: each reads its own shard of the epoch plan (`shard`, else the
    pipeline's place among all) in per-replica batches, so that a step consumes global_batch_size distinct
    examples; the first `skip_steps` steps are skipped (a step takes one batch per local replica from its
    pipeline)."""
    def pipeline(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
        return make(batch_size=context.get_per_replica_batch_size(global_batch_size),
                    shard=shard or (context.input_pipeline_id, context.num_input_pipelines),
                    skip_batches=skip_steps * local_replicas)

    return strategy.distribute_datasets_from_function(pipeline)


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
