"""A whole DeeperCluster training run from a Config: the function tools/train.py calls."""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Callable

import tensorflow as tf

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

from keras_dc import backbones, callbacks, checkpoints, clustering, config as config_lib, data, distribute
from keras_dc.config import Config, ConfigError
from keras_dc.model import DeeperClusterModel
from keras_dc.reclustering import Assignment
from keras_dc.sources import ImageSource, load_source


def configure_runtime(config: Config) -> None:
    """Seeds, op determinism and the mixed-precision policy; call before building anything."""
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(config.precision)


def build_model(config: Config, sync_batchnorm: bool = False) -> DeeperClusterModel:
    """Backbone + heads, compiled with SGD; call inside the strategy's scope."""
    backbone = backbones.build_backbone(config.arch, config.image_size, sobel=config.sobel,
                                        sync_batchnorm=sync_batchnorm, seed=config.seed, name="backbone")
    model = DeeperClusterModel(backbone, config.super_classes, config.sub_classes, name="deepercluster")
    optimizer = keras.optimizers.SGD(learning_rate=config.lr, momentum=config.momentum,
                                     weight_decay=config.weight_decay or None)
    model.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    model.optimizer.build(model.trainable_variables)
    return model


def prepare_data(config: Config, log: Callable[[str], None] = print) -> ImageSource:
    """Validates the settings, loads the source and checks the settings that depend on its size."""
    config_lib.validate(config)
    source = load_source(config.data, config.image_size, config.tfds_data_dir, config.synthetic_size, config.seed)
    config_lib.validate_for_data(config, source.num_images)
    if config.batch_size > source.num_images:
        raise ConfigError("batch_size", f"{config.batch_size} is larger than the {source.num_images} images")
    for warning in clustering.warn_small_clusters(source.num_images, config.k, config.super_clusters):
        log(f"warning: {warning}")
    return source


def train(config: Config, source: ImageSource | None = None, log: Callable[[str], None] = print) -> dict:
    """Trains (or resumes) the run in config.workdir and exports the backbone; returns a summary."""
    source = source or prepare_data(config, log)
    configure_runtime(config)
    strategy = distribute.get_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError("batch_size", f"{config.batch_size} is not divisible by the {replicas} replicas")
    config_path = os.path.join(config.workdir, "config.json")
    config_lib.check_resumable(config, config_path)
    chief = distribute.is_chief(strategy)
    if chief:
        checkpoints.write_json(config_path, {**dataclasses.asdict(config), "source": source.description})
    tables = data.LabelTables(source.num_images, source.num_images)
    with strategy.scope():
        model = build_model(config, sync_batchnorm=replicas > 1)
    training_checkpoints = checkpoints.TrainingCheckpoints(config.workdir, model)
    initial_epoch = training_checkpoints.restore()
    if initial_epoch:
        log(f"resuming {config.workdir} after epoch {initial_epoch}")
    dataset = data.training_dataset(source, tables, config.image_size, config.batch_size, config.rotation,
                                    config.seed, config.min_crop_scale, config.flip)
    if initial_epoch < config.epochs:
        model.fit(dataset, epochs=config.epochs, initial_epoch=initial_epoch, verbose=config.verbose,
                  callbacks=run_callbacks(config, source, tables, training_checkpoints, initial_epoch, log))
    if chief:
        export_backbone(model.backbone, config, source)
    return summary(config)


def run_callbacks(config: Config, source: ImageSource, tables: data.LabelTables,
                  training_checkpoints: checkpoints.TrainingCheckpoints, initial_epoch: int,
                  log: Callable[[str], None]) -> list[keras.callbacks.Callback]:
    """Re-clustering first (it must swap labels before the epoch), then checkpoint, metrics, TensorBoard."""
    board = os.path.join(config.workdir, "tensorboard")
    writer = tf.summary.create_file_writer(os.path.join(board, "clustering"))
    return [
        callbacks.ReclusterCallback(config, source, tables, config.workdir, log, writer),
        callbacks.CheckpointCallback(training_checkpoints),
        callbacks.MetricsFile(os.path.join(config.workdir, "metrics.jsonl"), initial_epoch),
        keras.callbacks.TensorBoard(board, write_graph=False, profile_batch=0),
    ]


def export_backbone(backbone: keras.Model, config: Config, source: ImageSource) -> str:
    """Saves the feature extractor (normalisation and Sobel included) with its description."""
    path = os.path.join(config.workdir, "backbone.keras")
    temporary = path + ".tmp.keras"
    backbone.save(temporary)
    os.replace(temporary, path)
    checkpoints.write_json(os.path.join(config.workdir, "backbone.json"), {
        "arch": config.arch, "image_size": config.image_size, "sobel": config.sobel,
        "input": "RGB float32 in [0, 255], shape (image_size, image_size, 3)",
        "output": "features before the final ReLU (fc7)", "epochs": config.epochs,
        "k": config.k, "super_clusters": config.super_clusters, "data": source.description})
    return path


def latest_assignment(workdir: str, first: bool = False) -> Assignment | None:
    """The most recent (or with `first`, the earliest) cycle's assignments saved in a workdir, if any."""
    paths = sorted(glob.glob(os.path.join(workdir, "assignments", "cycle_*.npz")))
    return Assignment.load(paths[0 if first else -1]) if paths else None


def summary(config: Config) -> dict:
    """Where the outputs are, and the first and last clusterings' figures."""
    workdir = config.workdir
    latest, first = latest_assignment(workdir), latest_assignment(workdir, first=True)
    return {
        "tensorboard": os.path.join(workdir, "tensorboard"),
        "checkpoints": os.path.join(workdir, "checkpoints"),
        "backbone": os.path.join(workdir, "backbone.keras"),
        "metrics": os.path.join(workdir, "metrics.jsonl"),
        "final_stats": latest.stats if latest else {},
        "first_stats": first.stats if first else {},
    }
