"""A whole DeeperCluster training run from a Config: the function tools/train.py calls."""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import numpy as np
import tensorflow as tf

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

from keras_dc import (backbones, callbacks, config as config_lib, data, distribute, feature_cache, head_groups,
                      kmeans, memory_plan, optimizer as optimizer_lib, preemption, pretrained, progress,
                      workdir as workdir_lib)
from keras_dc.config import Config, ConfigError
from keras_dc.eval_callback import EvaluationCallback
from keras_dc.head_groups import HeadLayout
from keras_dc.model import DeeperClusterModel
from keras_dc.sources import DataDirError, ImageSource, SourceError, labelled_like, load_source
from keras_dc.workdir import Position, TrainingCheckpoints, WorkdirError

UNREADABLE_SHOWN = 5  # unreadable file paths named in the log and TensorBoard
RESTORE_CANDIDATES = 8  # newest checkpoints of each group compared when groups of replicas restore


def configure_runtime(config: Config) -> None:
    """Seeds, op determinism and the mixed-precision policy; call before building anything."""
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(config.precision)


def build_model(config: Config, sync_batchnorm: bool = False, layout: HeadLayout | None = None
                ) -> DeeperClusterModel:
    """Backbone + heads (this replica's group's, given a grouped `layout`), compiled with torch-style SGD
    (coupled decay); call inside the strategy's scope."""
    backbone = backbones.build_backbone(config.arch, config.image_size, sobel=config.sobel,
                                        sync_batchnorm=sync_batchnorm, seed=config.seed, name="backbone")
    model = DeeperClusterModel(backbone, config.super_classes, config.sub_classes, layout, name="deepercluster")
    optimizer = optimizer_lib.SGD(learning_rate=config.lr, momentum=config.momentum,
                                  weight_decay=config.weight_decay, decoupled=config.decoupled_weight_decay)
    model.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    model.optimizer.build(model.optimized_variables)
    return model


def head_layout(config: Config, strategy: tf.distribute.Strategy) -> HeadLayout:
    """Which heads this process's replica owns (check_settings made sure it has one when grouped)."""
    replicas = strategy.num_replicas_in_sync
    groups = head_groups.resolve(config.head_groups, config.super_classes, replicas)
    return head_groups.layout(config.super_classes, groups, distribute.worker_position(strategy)[0], replicas)


def setting_errors(data_field: str = "data") -> contextlib.AbstractContextManager:
    """Turns the domain errors of the data, the workdir and the feature caches into ConfigErrors
    naming the Config field to fix (data_field for the data a source was loaded from)."""
    return config_lib.errors_as_flags({DataDirError: "tfds_data_dir", SourceError: data_field,
                                       feature_cache.CacheBudgetError: "max_cache_gb", WorkdirError: "workdir"})


def check_resumable(config: Config, num_images: int | None = None) -> None:
    """Refuses a workdir saved with other key settings (or, given num_images, another image count,
    unless --reindex_data)."""
    with setting_errors():
        saved = workdir_lib.saved_run(config.workdir)
    if saved is not None:
        config_lib.check_resumable(config, saved.config, saved.num_images,
                                   None if config.reindex_data else num_images, saved.recorded)


def check_settings(config: Config) -> tf.distribute.Strategy:
    """Every check that needs no data (flags, the workdir's saved settings, replicas), before
    anything expensive; returns the strategy to train with."""
    config_lib.validate(config)
    memory_plan.check_host_memory(config)
    strategy = distribute.get_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    resolve_head_groups(config, strategy)
    if not tf.config.list_physical_devices("GPU"):
        memory_plan.check_cpu_training_memory(config, replicas, replicas // distribute.worker_position(strategy)[1],
                                              int(config.head_groups))
    check_resumable(config)
    if config.batch_size % replicas:
        raise ConfigError("batch_size", f"{config.batch_size} is not divisible by the {replicas} replicas")
    if config.eval_every and distribute.in_multi_worker_mode(strategy):
        raise ConfigError("eval_every", "works in single-process training only; on several workers, evaluate "
                          "the exported backbone with tools/linear_probe.py")
    return strategy


def resolve_head_groups(config: Config, strategy: tf.distribute.Strategy) -> None:
    """Sets config.head_groups to the number of groups it asks for on this strategy's replicas (so that
    `auto` is saved as its value); grouped heads need one replica per process."""
    with config_lib.errors_as_flags({head_groups.GroupError: "head_groups"}):
        groups = head_groups.resolve(config.head_groups, config.super_classes, strategy.num_replicas_in_sync)
    local = strategy.num_replicas_in_sync // distribute.worker_position(strategy)[1]
    if groups > 1 and local > 1:
        raise ConfigError("head_groups", f"{groups} groups need one replica per process, and this one has {local} "
                          f"devices: start one process per GPU (tools/launch_local.py --gpus_per_worker=1 on one "
                          f"machine; docs/scaling.md)")
    config.head_groups = str(groups)


def prepare_data(config: Config, log: Callable[[str], None] = print) -> ImageSource:
    """Loads the source and checks the settings that depend on it (after check_settings)."""
    with setting_errors(), progress.reporting(config.verbose, config.progress_seconds):
        index = None if config.reindex_data else workdir_lib.data_index(config.workdir)
        source = load_source(config.data, config.image_size, config.tfds_data_dir, config.synthetic_size,
                             config.seed, config.max_image_mb, index, config.max_image_pixels)
    config_lib.validate_for_data(config, source.num_images)
    check_resumable(config, source.num_images)
    if config.batch_size > source.num_images:
        raise ConfigError("batch_size", f"{config.batch_size} is larger than the {source.num_images} images")
    if source.unreadable:
        log(f"data: skipped {len(source.unreadable)} unreadable files or entries; first ones: "
            f"{', '.join(source.unreadable[:UNREADABLE_SHOWN])}")
    head_warning = config_lib.head_batch_warning(config)
    for warning in kmeans.warn_small_clusters(source.num_images, config.k, config.super_clusters) + (
            [head_warning] if head_warning else []):
        log(f"warning: {warning}")
    return source


def train(config: Config, source: ImageSource | None = None, log: Callable[[str], None] = print,
          strategy: tf.distribute.Strategy | None = None) -> dict:
    """Trains (or resumes) the run in config.workdir and exports the backbone; returns a summary.

    Raises ConfigError for a bad setting, preemption.Preempted after SIGTERM (a checkpoint
    was saved at the current batch), workdir.Diverged if the loss or the weights become
    non-finite and an OSError (workdir.StorageError) when a workdir file cannot be written
    or no checkpoint reads back whole.
    """
    strategy = strategy or check_settings(config)
    source = source or prepare_data(config, log)
    chief = distribute.is_chief(strategy)
    with contextlib.ExitStack() as stack:
        if chief:  # the other workers of a multi-worker run share the chief's workdir
            with setting_errors():
                stack.enter_context(workdir_lib.locked(config.workdir, log))
        return train_locked(config, source, log, strategy, chief)


def train_locked(config: Config, source: ImageSource, log: Callable[[str], None],
                 strategy: tf.distribute.Strategy, chief: bool) -> dict:
    """train() once the workdir's lock is held (by the chief)."""
    cache = cache_settings(config, strategy, source.num_images)
    evaluation = evaluation_callback(config, source)
    configure_runtime(config)
    layout = head_layout(config, strategy)
    tables = data.LabelTables(source.num_images, source.num_images // layout.groups)
    with strategy.scope():
        model = build_model(config, sync_batchnorm=strategy.num_replicas_in_sync > 1, layout=layout)
    make_dataset = functools.partial(data.training_dataset, source, tables, config.image_size,
                                     rotation=config.rotation, seed=config.seed,
                                     min_crop_scale=config.min_crop_scale, flip=config.flip)
    dataset = make_dataset(batch_size=config.batch_size // layout.groups)  # a group's share of each step
    training_checkpoints = TrainingCheckpoints(config.workdir, model, int(dataset.cardinality()), group=layout.group)
    writer = chief or (layout.grouped and layout.rank == 0)  # of this group's checkpoint folder
    peers = GroupPeers(distribute.Collective(strategy)) if layout.grouped else None
    with setting_errors():
        start = training_checkpoints.restore(functools.partial(assignments_problem, config), log, writer, peers)
    if config.pretrained and start == Position(0):  # before the first clustering, which sees these features
        pretrained.load_into(model.backbone, config.pretrained, config.arch, config.sobel)
        log(f"pretrained: the body starts from {config.pretrained}, the heads from random weights")
    apply_settings(model, config)
    if start.epoch > config.epochs:
        raise ConfigError("epochs", f"the workdir {config.workdir} has trained {start.epoch} epochs; give "
                          f"--epochs={start.epoch} or more (the run is done at {start.epoch})")
    if chief:
        workdir_lib.set_aside_damaged_assignments(config.workdir, log)
        record_changes(config, start, log)
        workdir_lib.write_config(config.workdir, config, source.description, source.num_images)
        if source.index is not None:
            workdir_lib.save_data_index(config.workdir, source.index)
        write_data_summary(source, workdir_lib.tensorboard_dir(config.workdir, "data"))
    if start != Position(0):
        log(f"resuming {config.workdir} after epoch {start.epoch}" + (f", batch {start.step}" if start.step else ""))
    if start.epoch < config.epochs:
        with preemption.sigterm_requests() as stop_request, \
                distribute.checkpoint_write_dir(config.workdir, writer) as write_dir, \
                progress.reporting(config.verbose if chief else 0, config.progress_seconds):
            saver = training_checkpoints if writer else training_checkpoints.elsewhere(write_dir)
            callback_list = run_callbacks(config, source, tables, saver, start, stop_request, log, strategy,
                                          cache, evaluation, layout)
            with distribute.keras_fit_context(model, strategy), setting_errors():  # no image decodes
                fit(model, functools.partial(worker_dataset, strategy, make_dataset, config.batch_size, layout),
                    config, start, callback_list)
    if chief:
        export_backbone(model.backbone, config, source)
    return summary(config)


class GroupPeers:
    """The other groups of replicas at a restore (workdir.CheckpointPeers): each group restores from its
    own folder, and all must restore the same checkpoint."""

    def __init__(self, collective: distribute.Collective):
        self.collective = collective

    def common(self, numbers: list[int]) -> set[int]:
        found = self._gathered(numbers[:RESTORE_CANDIDATES] + [-1] * (RESTORE_CANDIDATES - len(numbers)))
        return set.intersection(*(set(row) - {-1} for row in found))

    def agree(self, number: int) -> bool:
        return len(set(self._gathered([number]).ravel())) == 1

    def _gathered(self, values: list[int]) -> np.ndarray:
        """Every worker's `values`, one row each (an all-reduce of rows that are zero but this worker's)."""
        rows = np.zeros((self.collective.workers, len(values)), np.int64)
        rows[self.collective.worker] = values
        return self.collective.all_reduce_sum(rows)


def assignments_problem(config: Config, position: Position) -> str | None:
    """Why a checkpoint at `position` cannot be resumed from: the cycle it stopped in the middle of has
    damaged or missing assignments (a cycle that starts there is clustered again instead; clustering a
    cycle resumed mid-way would use a later model than the uninterrupted run did)."""
    if position.step == 0 and position.epoch % config.reassign_every == 0:
        return None
    cycle = position.epoch // config.reassign_every
    problem = workdir_lib.assignment_problem(config.workdir, cycle, missing=True)
    return problem and f"needs {problem}"


def apply_settings(model: DeeperClusterModel, config: Config) -> None:
    """Gives the settings a checkpoint also holds their values of this run: the optimizer's learning
    rate is a variable restored with it, and a resumed run trains with the --lr it was given."""
    model.optimizer.learning_rate.assign(config.lr)


def record_changes(config: Config, start: Position, log: Callable[[str], None]) -> None:
    """Logs each setting this run changes from the workdir's saved ones, one line each, and appends
    them to settings_history.jsonl (before config.json is rewritten with the new values)."""
    with setting_errors():
        saved = workdir_lib.saved_run(config.workdir)
    if saved is None:
        return
    changes = config_lib.changed_settings(config, saved.config, saved.recorded)
    for flag, (before, after) in sorted(changes.items()):
        log(f"resume: --{flag} changed from {before} to {after}; the new value applies from here on")
    if changes:
        workdir_lib.record_setting_changes(config.workdir, start, changes)


def fit(model: DeeperClusterModel, datasets: Callable[[int], tf.data.Dataset | tf.distribute.DistributedDataset],
        config: Config, start: Position, callback_list: list[keras.callbacks.Callback]) -> None:
    """Trains from `start` to config.epochs on `datasets(skipped_steps)`; an epoch stopped mid-way first
    finishes from its saved batch.

    An epoch's plan and augmentations depend on (seed, epoch) only, so skipping the
    batches already trained continues exactly as the uninterrupted run.
    """
    run = functools.partial(model.fit, callbacks=callback_list, verbose=progress.resolve_verbose(config.verbose),
                            shuffle=False)  # the dataset is in the epoch plan's order already
    first = start.epoch
    if start.step:
        run(datasets(start.step), epochs=start.epoch + 1, initial_epoch=start.epoch)
        first += 1
    if first < config.epochs:
        run(datasets(0), epochs=config.epochs, initial_epoch=first)


def worker_dataset(strategy: tf.distribute.Strategy, make_dataset: Callable[..., tf.data.Dataset],
                   global_batch_size: int, layout: HeadLayout, skip_steps: int = 0
                   ) -> tf.data.Dataset | tf.distribute.DistributedDataset:
    """What `make_dataset(batch_size=, shard=, skip_batches=)` builds for this process, less the epoch's first
    `skip_steps` steps: the whole epoch's batches, which Keras splits over the local replicas, or in
    multi-worker mode each worker's shard of the epoch plan (of its group's plan, when groups of replicas
    own the heads; tf.distribute datasets have no skip)."""
    if not distribute.in_multi_worker_mode(strategy):
        return make_dataset(batch_size=global_batch_size, skip_batches=skip_steps)
    shard = (layout.rank, layout.group_size) if layout.grouped else None
    return data.distributed_training_dataset(strategy, make_dataset, global_batch_size, shard, skip_steps)


def run_callbacks(config: Config, source: ImageSource, tables: data.LabelTables,
                  training_checkpoints: TrainingCheckpoints, start: Position,
                  stop_request: preemption.StopRequest | None, log: Callable[[str], None],
                  strategy: tf.distribute.Strategy | None = None, cache: feature_cache.CacheSettings | None = None,
                  evaluation: EvaluationCallback | None = None, layout: HeadLayout | None = None
                  ) -> list[keras.callbacks.Callback]:
    """Loss guard first (no batch may be saved after a NaN), re-clustering (it must swap labels before
    the epoch), evaluation, metrics, TensorBoard, and the checkpoint last (an epoch is saved once fully
    logged). Only the chief (worker 0) writes the metrics file and TensorBoard logs."""
    collective = distribute.Collective(strategy)
    chief = collective.worker == 0
    board = workdir_lib.tensorboard_dir(config.workdir)
    writer = tf.summary.create_file_writer(workdir_lib.tensorboard_dir(config.workdir, "clustering")) if chief else None
    recluster = callbacks.ReclusterCallback(config, source, tables, config.workdir, log, writer,
                                            resumed_mid_epoch=start.epoch if start.step else None,
                                            collective=collective, cache=cache, layout=layout)
    logs = [callbacks.MetricsFile(config.workdir, start.epoch, log, recluster.take_stats),
            keras.callbacks.TensorBoard(board, write_graph=False, profile_batch=0)] if chief else []
    return [
        callbacks.StopOnNonFiniteLoss(),
        recluster,
        callbacks.ReportFailedImages(source, log, UNREADABLE_SHOWN, record_index(config, source, chief)),
        *([evaluation] if evaluation else []),
        *logs,
        callbacks.CheckpointCallback(training_checkpoints, start, stop_request, collective),
    ]


def record_index(config: Config, source: ImageSource, chief: bool) -> Callable[[], None] | None:
    """What saves the images that failed to read or decode in the workdir's data index, on the chief of a folder run."""
    if not chief or source.index is None:
        return None
    return functools.partial(workdir_lib.save_data_index, config.workdir, source.index)


def cache_settings(config: Config, strategy: tf.distribute.Strategy, num_images: int) -> feature_cache.CacheSettings:
    """Where and how this worker caches features while clustering; refuses, before training, a run
    whose caches would exceed --max_cache_gb."""
    folder = config.feature_cache_dir or workdir_lib.feature_cache_dir(config.workdir)
    settings = feature_cache.CacheSettings(folder, config.feature_cache_dtype, config.max_cache_gb)
    start, stop = feature_cache.shard_bounds(num_images, *distribute.worker_position(strategy))
    widths = feature_cache.clustering_widths(backbones.FEATURE_DIM[config.arch], config.pca_dim)
    with setting_errors():
        feature_cache.check_cache_budget(stop - start, widths, settings)
    return settings


def evaluation_callback(config: Config, source: ImageSource) -> EvaluationCallback | None:
    """The k-NN / linear-probe callback of --eval_every, on --eval_data or a held-out part of --data."""
    if not config.eval_every:
        return None
    if source.labels is None:
        raise ConfigError("eval_every", f"needs labelled images, and {source.description} has no labels")
    val_source = None
    if config.eval_data:
        with setting_errors(data_field="eval_data"):
            val_source = load_source(config.eval_data, config.image_size, config.tfds_data_dir,
                                     config.synthetic_size, config.seed + 1)
            if val_source.labels is None:
                raise ConfigError("eval_data", f"{val_source.description} has no labels")
            val_source = labelled_like(val_source, source)
    return EvaluationCallback(source, val_source, config.eval_every)


def write_data_summary(source: ImageSource, folder: str) -> None:
    """Image count, unreadable-file count and the first unreadable paths, for TensorBoard."""
    writer = tf.summary.create_file_writer(folder)
    with writer.as_default(step=0):
        tf.summary.scalar("data/images", source.num_images)
        tf.summary.scalar("data/unreadable_files", len(source.unreadable))
        if source.unreadable:
            tf.summary.text("data/unreadable_examples", "\n\n".join(source.unreadable[:UNREADABLE_SHOWN]))
    writer.close()


def export_backbone(backbone: keras.Model, config: Config, source: ImageSource) -> str:
    """Saves the feature extractor (normalisation and Sobel included) with its description."""
    return workdir_lib.save_backbone(config.workdir, backbone, {
        "arch": config.arch, "image_size": config.image_size, "sobel": config.sobel,
        "input": "RGB float32 in [0, 255], shape (image_size, image_size, 3)",
        "output": "features before the final ReLU (fc7)", "epochs": config.epochs,
        "k": config.k, "super_clusters": config.super_clusters, "data": source.description,
        **({"pretrained": config.pretrained} if config.pretrained else {})})


def summary(config: Config) -> dict:
    """Where the outputs are, and the first and last clusterings' figures."""
    workdir = config.workdir
    latest, first = workdir_lib.latest_assignment(workdir), workdir_lib.latest_assignment(workdir, first=True)
    return {
        "tensorboard": workdir_lib.tensorboard_dir(workdir),
        "checkpoints": workdir_lib.checkpoints_dir(workdir),
        "backbone": workdir_lib.backbone_path(workdir),
        "metrics": workdir_lib.metrics_path(workdir),
        "final_stats": latest[1].stats if latest else {},
        "first_stats": first[1].stats if first else {},
    }
