"""Keras callbacks of a DeeperCluster run: re-clustering, checkpoints, the metrics file and a loss guard."""

from __future__ import annotations

import json
import math
import os
from typing import Callable

import numpy as np
import tensorflow as tf

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

from keras_dc import model as model_lib, progress, reclustering, sampling, workdir as workdir_lib
from keras_dc.config import Config
from keras_dc.data import LabelTables
from keras_dc.distribute import Collective
from keras_dc.feature_cache import CacheSettings
from keras_dc.head_groups import HeadLayout
from keras_dc.preemption import Preempted, StopRequest
from keras_dc.sources import ImageSource, SourceError
from keras_dc.workdir import Assignment, Position, TrainingCheckpoints


class ReclusterCallback(keras.callbacks.Callback):
    """Every T epochs: re-cluster, save, swap the label tables and reset the heads.

    Before every epoch it also draws that epoch's sampling plan. On a resumed
    run it reuses a cycle's saved assignments instead of clustering again, and
    an epoch resumed mid-way (`resumed_mid_epoch`) keeps its restored heads;
    with --reindex_data the data's indices changed, so it clusters at once.
    On several workers (`collective`) all cluster together and worker 0 saves.
    """

    def __init__(self, config: Config, source: ImageSource, tables: LabelTables, workdir: str,
                 log: Callable[[str], None] = print, writer: tf.summary.SummaryWriter | None = None,
                 resumed_mid_epoch: int | None = None, collective: Collective | None = None,
                 cache: CacheSettings | None = None, layout: HeadLayout | None = None):
        super().__init__()
        self.layout = layout or HeadLayout(config.super_classes)
        self.collective = collective or Collective()
        self.cache = cache
        self.config = config
        self.resumed_mid_epoch = resumed_mid_epoch
        self.source = source
        self.tables = tables
        self.workdir = workdir
        self.log = log
        self.writer = writer
        self.assignment: Assignment | None = None
        self._cycle: int | None = None
        self._new_stats: dict = {}

    def on_epoch_begin(self, epoch, logs=None):
        cycle = epoch // self.config.reassign_every
        if cycle != self._cycle:
            cycle_start = epoch % self.config.reassign_every == 0
            self._activate(cycle, report=cycle_start, reset=cycle_start and epoch != self.resumed_mid_epoch)
        self._draw_plan(epoch)

    def take_stats(self) -> dict:
        """The scalar figures of a clustering reported since the last call (for metrics.jsonl), once."""
        stats, self._new_stats = self._new_stats, {}
        return stats

    def _activate(self, cycle: int, report: bool, reset: bool) -> None:
        path = workdir_lib.assignment_path(self.workdir, cycle)
        reindexed = self.config.reindex_data and self._cycle is None
        if self._saved_for_all(path) and not reindexed:
            self.assignment = Assignment.load(path)
            self.log(f"clustering: cycle {cycle} assignments loaded from {path}")
            computed = False
        else:
            previous = self._previous(cycle)
            self.assignment = reclustering.recluster(self.model.backbone, self.source, self.config, cycle,
                                                     previous, self.log, self.collective, self.cache)
            if self.collective.worker == 0:
                self.assignment.save(path)
            self.log(reclustering.summary_line(cycle, self.assignment.stats))
            computed = True
        if computed or report:
            self._report(cycle)
        self._swap_tables()
        if reset or reindexed:
            model_lib.reset_heads(self.model, reclustering.cycle_seed(self.config.seed, cycle, 2),
                                  keep_super_head=self.config.super_clusters == 1)
        self._cycle = cycle

    def _saved_for_all(self, path: str) -> bool:
        """Whether every worker sees the saved assignments, so that all load or all cluster together."""
        seen = self.collective.all_reduce_sum(np.array([os.path.exists(path)], dtype=np.int64))
        return int(seen[0]) == self.collective.workers

    def _previous(self, cycle: int) -> Assignment | None:
        if self.assignment is not None:
            return self.assignment
        path = workdir_lib.assignment_path(self.workdir, cycle - 1)
        if cycle == 0 or not os.path.exists(path):
            return None
        previous = Assignment.load(path)
        return previous if len(previous.super_ids) == self.source.num_images else None  # not if re-indexed

    def _swap_tables(self) -> None:
        weights = sampling.example_weights(self.config.sampling, self.cluster_ids, self.config.k)
        self.tables.set_assignments(self.assignment.super_ids, self.assignment.sub_ids, weights)

    @property
    def cluster_ids(self) -> np.ndarray:
        return self.assignment.cluster_ids(self.config.sub_classes)

    def _draw_plan(self, epoch: int) -> None:
        """The epoch's plan: of all images, or of the images of this replica's group's super-classes."""
        config = self.config
        if self.layout.grouped:
            indices, rotations = sampling.group_epoch_plan(
                config.sampling, self.assignment.super_ids, self.cluster_ids, config.k, self.tables.plan_size,
                config.seed, epoch, config.rotation, self.layout.owned)
        else:
            indices, rotations = sampling.epoch_plan(config.sampling, self.cluster_ids, config.k,
                                                     self.tables.plan_size, config.seed, epoch, config.rotation)
        self.tables.set_plan(indices, rotations, epoch)

    def _report(self, cycle: int) -> None:
        """Every figure of the cycle's clustering to TensorBoard, and for metrics.jsonl (take_stats)."""
        stats = self.assignment.stats
        self._new_stats = {key: value for key, value in stats.items() if np.isscalar(value)}
        if self.writer is not None:
            sizes = np.bincount(self.cluster_ids, minlength=self.config.k)
            with self.writer.as_default(step=cycle):
                tf.summary.histogram("cluster_sizes", sizes)
                for key, value in self._new_stats.items():
                    tf.summary.scalar(f"clustering/{key}", value)
            self.writer.flush()


class ReportFailedImages(keras.callbacks.Callback):
    """After each epoch, reports the images that could not be read or decoded while training or
    clustering (they were skipped: weight 0, never tried again) and calls `record` (the chief saves
    the workdir's data index, so that a resumed run skips them too); stops the run with a SourceError
    when no image of the data could be read at all."""

    def __init__(self, source: ImageSource, log: Callable[[str], None] = print, shown: int = 5,
                 record: Callable[[], None] | None = None):
        super().__init__()
        self.source = source
        self.log = log
        self.shown = shown
        self.record = record
        self.reported: set[str] = set()

    def on_epoch_end(self, epoch, logs=None):
        new = sorted(self.source.failed - self.reported)
        if not new:
            return
        self.reported.update(new)
        if self.record:
            self.record()
        self.log(f"data: skipped {len(new)} files that could not be read or decoded during epoch {epoch + 1} "
                 f"({len(self.reported)} in all); first ones: {', '.join(new[:self.shown])}")
        if not self.source.usable.any():
            raise SourceError(f"none of the {self.source.num_images} images of {self.source.description} "
                              f"can be read or decoded (first: {new[0]})")


class StageProgress(keras.callbacks.Callback):
    """Progress lines (keras_dc.progress) over the `images` of a predict pass, or of each epoch of a fit,
    in batches of `batch_size`: a long pass shows its rate and ETA as training's stages do."""

    def __init__(self, name: str, images: int, batch_size: int):
        super().__init__()
        self.name, self.images, self.batch_size = name, images, batch_size
        self.stage: progress.Stage | None = None

    def on_predict_begin(self, logs=None):
        self.stage = progress.Stage(self.name, self.images, "image")

    def on_epoch_begin(self, epoch, logs=None):
        self.stage = progress.Stage(f"{self.name}, epoch {epoch + 1}", self.images, "image")

    def on_predict_batch_end(self, batch, logs=None):
        self.stage.update(min((batch + 1) * self.batch_size, self.images))

    def on_train_batch_end(self, batch, logs=None):
        self.on_predict_batch_end(batch)


class NonFiniteLoss(workdir_lib.Diverged):
    """The loss became NaN or infinite; training stopped before any checkpoint held that state."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises NonFiniteLoss at the first batch whose loss is not finite.

    Unlike keras.callbacks.TerminateOnNaN, which lets the epoch end (and the
    checkpoint callback save), raising leaves the last good checkpoint the latest.
    Keep it before CheckpointCallback, so that its batch check runs first.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"the loss became {loss} at epoch {self.epoch + 1}, batch {batch + 1}; "
                                f"training stopped and the last good checkpoint was kept")


class CheckpointCallback(keras.callbacks.Callback):
    """Saves after every epoch, and at the current batch when pre-emption is requested.

    A run resumed mid-epoch starts at `start`: that epoch's batches are counted
    from start.step and the running metrics that fit() reset are put back. Keep
    it last, so that the other callbacks have finished an epoch before it is saved.
    On several workers (`collective`) the workers agree after every batch whether
    any was asked to stop, so that all save at the same batch and stop together.
    """

    def __init__(self, training_checkpoints: TrainingCheckpoints, start: Position,
                 stop_request: StopRequest | None = None, collective: Collective | None = None):
        super().__init__()
        self.training_checkpoints = training_checkpoints
        self.start = start
        self.stop_request = stop_request
        self.collective = collective
        self.position = start

    def on_epoch_begin(self, epoch, logs=None):
        self.position = Position(epoch, self.start.step if epoch == self.start.epoch else 0)
        if self.position.step:
            self.training_checkpoints.put_back_metrics()

    def on_train_batch_end(self, batch, logs=None):
        self.position = Position(self.position.epoch, self.position.step + 1)
        if self.position.step < self.training_checkpoints.steps_per_epoch:
            self._stop_if_requested()

    def on_epoch_end(self, epoch, logs=None):
        self.position = Position(epoch + 1)
        self.training_checkpoints.save(self.position)
        self._stop_if_requested(saved=True)

    def _stop_if_requested(self, saved: bool = False) -> None:
        requested = self.stop_request is not None and self.stop_request.requested
        if self.collective is not None and self.collective.workers > 1:
            requested = bool(self.collective.all_reduce_sum(np.array([requested], np.int64))[0])
        if not requested:
            return
        if not saved:
            self.training_checkpoints.save(self.position)
        raise Preempted(self.position, self.training_checkpoints.steps_per_epoch)


class MetricsFile(keras.callbacks.Callback):
    """Keeps each epoch's figures, the learning rate it trained with, and those `extra` returns (a
    clustering's), as one JSON line (machine-readable twin of TensorBoard).

    The whole file is rewritten atomically each epoch, so a kill never leaves half
    a line; on resume, the lines of epochs that will be redone are dropped.
    """

    def __init__(self, workdir: str, first_epoch: int, log: Callable[[str], None] = print,
                 extra: Callable[[], dict] | None = None):
        super().__init__()
        self.path = workdir_lib.metrics_path(workdir)
        self.lines = workdir_lib.read_metrics(workdir, first_epoch, log)
        self.extra = extra or dict

    def on_epoch_end(self, epoch, logs=None):
        learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        figures = {**(logs or {}), **self.extra()}
        record = {"epoch": epoch + 1, "learning_rate": learning_rate,
                  **{key: float(value) for key, value in figures.items()}}
        self.lines.append(json.dumps(record, sort_keys=True) + "\n")
        workdir_lib.atomic_write_bytes(self.path, "".join(self.lines).encode())
