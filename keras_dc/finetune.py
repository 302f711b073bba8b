"""Supervised fine-tuning of a backbone on labelled images (docs/evaluation.md, "Fine-tuning").

The classifier is the backbone, the same ReLU the training heads see, a batch norm without scale or
offset (standardised features), and one Dense layer. `freeze` says which of the backbone's layers keep
their weights: "all" (a linear classifier on the frozen body, run in inference mode), "none"
(everything trains), or a layer name: that layer and every layer before it in the backbone are frozen
(their batch norms use their moving statistics). Training views are the pre-training's augmentation
(random resized crop, optional flip, no rotation) from the same pipeline; validation is the centre
view. SGD is torch's (coupled decay) with a cosine schedule.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

from keras_dc import callbacks as callbacks_lib, data, optimizer as optimizer_lib
from keras_dc.sources import ImageSource

FREEZE_ALL, FREEZE_NONE = "all", "none"
_BN_MOMENTUM = 0.9
# Far below the variance of any useful feature (a random small net's fc7: about 1e-4; Keras's default
# epsilon, 1e-3, would leave such features unscaled).
_BN_EPSILON = 1e-6


class FreezeError(ValueError):
    """`freeze` names no layer of the backbone."""


class BatchSizeError(ValueError):
    """The batch is larger than the training images."""


@dataclasses.dataclass
class FinetuneSettings:
    """How the classifier trains; see the module docstring."""

    epochs: int = 30
    lr: float = 0.01
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 1e-4
    freeze: str = FREEZE_NONE
    min_crop_scale: float = 0.08
    flip: bool = True
    seed: int = 0


@dataclasses.dataclass
class Split:
    """Which images train and which validate: rows of a training source and of a validation source."""

    train: ImageSource
    train_rows: np.ndarray
    val: ImageSource
    val_rows: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(max(self.train.labels.max(), self.val.labels.max())) + 1


def freeze_layers(backbone: keras.Model, freeze: str) -> list[str]:
    """Marks the layers `freeze` names as not trainable; returns the names of the frozen layers."""
    names = [layer.name for layer in backbone.layers]
    if freeze == FREEZE_ALL:
        last = len(names) - 1
    elif freeze == FREEZE_NONE:
        last = -1
    elif freeze in names:
        last = names.index(freeze)
    else:
        raise FreezeError(f"the backbone has no layer {freeze!r}; give {FREEZE_ALL}, {FREEZE_NONE} or a layer "
                          f"name such as {names[len(names) // 2]!r}")
    for layer in backbone.layers[:last + 1]:  # the others keep their own setting (fixed Sobel stays fixed)
        layer.trainable = False
    return names[:last + 1]


class Classifier(keras.Model):
    """backbone -> ReLU -> BN (no scale, no offset) -> Dense(num_classes) logits.

    With `frozen_body` the backbone always runs in inference mode (no dropout, BN moving statistics):
    a functional `backbone(x, training=False)` would not do, Keras passes the outer `training` on.
    """

    def __init__(self, backbone: keras.Model, num_classes: int, frozen_body: bool, seed: int, **kwargs):
        super().__init__(name="finetune", **kwargs)
        self.backbone, self.frozen_body = backbone, frozen_body
        self.relu = keras.layers.ReLU(name="feature_relu")
        # Standardised features (as MAE's linear probing): the learning rate then does not depend on the
        # scale of a backbone's features, which differs by orders between trained and random ones.
        self.norm = keras.layers.BatchNormalization(center=False, scale=False, momentum=_BN_MOMENTUM,
                                                    epsilon=_BN_EPSILON, name="feature_norm")
        self.head = keras.layers.Dense(num_classes, dtype="float32", name="classifier",
                                       kernel_initializer=keras.initializers.VarianceScaling(  # torch's nn.Linear
                                           1.0 / 3.0, "fan_in", "uniform", seed=seed))

    def call(self, images, training=False):
        features = self.backbone(images, training=bool(training) and not self.frozen_body)
        return self.head(self.norm(self.relu(features), training=training))


def build(backbone: keras.Model, num_classes: int, steps: int, settings: FinetuneSettings) -> keras.Model:
    """Adds the classifier to the (frozen as wanted) backbone and compiles it (inside the strategy's scope)."""
    model = Classifier(backbone, num_classes, settings.freeze == FREEZE_ALL, settings.seed)
    schedule = keras.optimizers.schedules.CosineDecay(settings.lr, steps)
    model.compile(optimizer=optimizer_lib.SGD(schedule, momentum=settings.momentum,
                                              weight_decay=settings.weight_decay),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1"),
                           keras.metrics.SparseTopKCategoricalAccuracy(min(5, num_classes), name="top5")])
    return model


class _EpochPlan(keras.callbacks.Callback):
    """A new order of the training rows each epoch, read by the pipeline when the epoch starts."""

    def __init__(self, tables: data.LabelTables, rows: np.ndarray, seed: int):
        super().__init__()
        self.tables, self.rows, self.rng = tables, rows, np.random.default_rng(seed)

    def on_epoch_begin(self, epoch, logs=None):
        self.tables.set_plan(self.rng.permutation(self.rows), np.zeros(len(self.rows)), epoch)


def training_data(split: Split, image_size: int, settings: FinetuneSettings):
    """(dataset of (augmented images, labels), the callback that orders each epoch)."""
    source = split.train
    tables = data.LabelTables(source.num_images, len(split.train_rows))
    tables.set_assignments(np.zeros(source.num_images), source.labels, np.ones(source.num_images))
    dataset = data.training_dataset(source, tables, image_size, settings.batch_size, rotation=False,
                                    seed=settings.seed, min_crop_scale=settings.min_crop_scale, flip=settings.flip)
    return dataset.map(lambda images, targets: (images, targets["sub"])), _EpochPlan(tables, split.train_rows,
                                                                                    settings.seed)


def validation_data(split: Split, image_size: int, batch_size: int) -> tf.data.Dataset:
    """Centre views of the validation rows with their labels, in order."""
    images = data.clustering_dataset(split.val, image_size, batch_size, split.val_rows)
    labels = tf.data.Dataset.from_tensor_slices(split.val.labels[split.val_rows].astype(np.int32)).batch(batch_size)
    return tf.data.Dataset.zip((images, labels))


def training_top1_note(backbone: keras.Model, settings: FinetuneSettings) -> str:
    """Why the training top-1 Keras logs is below the validation top-1: it is measured on augmented views,
    with dropout on when the body trains, and averaged over an epoch while the weights still improve."""
    views = "random resized crops" + (" and flips" if settings.flip else "")
    dropout = settings.freeze != FREEZE_ALL and any(isinstance(layer, keras.layers.Dropout)
                                                    for layer in backbone.layers)
    return (f"training top-1 is measured on {views} (down to {settings.min_crop_scale:g} of the image)"
            + (", with dropout on" if dropout else "") + ", averaged over each epoch as the weights change; "
            "validation top-1 on centre views after the epoch: a lower training top-1 is expected")


def finetune(backbone: keras.Model, split: Split, settings: FinetuneSettings, strategy: tf.distribute.Strategy,
             log_dir: str = "", verbose: int = 0) -> dict:
    """Trains the classifier for settings.epochs; returns {"top1", "top5", "history", "frozen_layers", ...}
    with the validation top-1/top-5 after the last epoch.

    `backbone` must have been built or loaded in `strategy`'s scope. TensorBoard logs go to `log_dir`.
    """
    image_size = backbone.input_shape[1]
    if settings.batch_size > len(split.train_rows):
        raise BatchSizeError(f"{settings.batch_size} is larger than the {len(split.train_rows)} "
                         "training images")
    frozen = freeze_layers(backbone, settings.freeze)
    dataset, plan = training_data(split, image_size, settings)
    with strategy.scope():
        model = build(backbone, split.num_classes, settings.epochs * int(dataset.cardinality()), settings)
    shown = callbacks_lib.StageProgress("fine-tuning", len(split.train_rows), settings.batch_size)
    callbacks = [plan, shown] + ([keras.callbacks.TensorBoard(log_dir)] if log_dir else [])
    history = model.fit(dataset, epochs=settings.epochs, validation_data=validation_data(
        split, image_size, settings.batch_size), callbacks=callbacks, shuffle=False, verbose=verbose)
    values = {name: [float(value) for value in series] for name, series in history.history.items()}
    return {"top1": values["val_top1"][-1], "top5": values["val_top5"][-1], "epochs": settings.epochs,
            "history": values, "frozen_layers": frozen,
            "images": {"train": len(split.train_rows), "val": len(split.val_rows)}}
