"""Keras callbacks of a DeeperCluster run: re-clustering, checkpoints and the metrics file."""

from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np
import tensorflow as tf

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

from keras_dc import checkpoints, hierarchy, model as model_lib, reclustering, sampling
from keras_dc.config import Config
from keras_dc.data import LabelTables
from keras_dc.reclustering import Assignment
from keras_dc.sources import ImageSource


class ReclusterCallback(keras.callbacks.Callback):
    """Every T epochs: re-cluster, save, swap the label tables and reset the heads.

    Before every epoch it also draws that epoch's sampling plan. On a resumed
    run it reuses a cycle's saved assignments instead of clustering again.
    """

    def __init__(self, config: Config, source: ImageSource, tables: LabelTables, workdir: str,
                 log: Callable[[str], None] = print, writer: tf.summary.SummaryWriter | None = None):
        super().__init__()
        self.config = config
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
            self._activate(cycle, reset=epoch % self.config.reassign_every == 0)
        self._draw_plan(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self._new_stats)
        self._new_stats = {}

    def _activate(self, cycle: int, reset: bool) -> None:
        path = checkpoints.assignment_path(self.workdir, cycle)
        if os.path.exists(path):
            self.assignment = Assignment.load(path)
            self.log(f"clustering: cycle {cycle} assignments loaded from {path}")
            computed = False
        else:
            previous = self._previous(cycle)
            self.assignment = reclustering.recluster(self.model.backbone, self.source, self.config, cycle,
                                                     previous, self.log)
            self.assignment.save(path)
            computed = True
        if computed or reset:
            self._report(cycle)
        self._swap_tables()
        if reset:
            model_lib.reset_heads(self.model, reclustering.cycle_seed(self.config.seed, cycle, 2))
        self._cycle = cycle

    def _previous(self, cycle: int) -> Assignment | None:
        if self.assignment is not None:
            return self.assignment
        path = checkpoints.assignment_path(self.workdir, cycle - 1)
        return Assignment.load(path) if cycle > 0 and os.path.exists(path) else None

    def _swap_tables(self) -> None:
        weights = np.ones(self.source.num_images, np.float32)
        if self.config.sampling == "weighted":
            weights = sampling.inverse_size_weights(self.cluster_ids, self.config.k)
        self.tables.set_assignments(self.assignment.super_ids, self.assignment.sub_ids, weights)

    @property
    def cluster_ids(self) -> np.ndarray:
        return self.assignment.cluster_ids(self.config.sub_classes)

    def _draw_plan(self, epoch: int) -> None:
        rng = sampling.epoch_rng(self.config.seed, epoch)
        size = self.tables.plan_size
        if self.config.sampling == "uniform":
            indices = sampling.uniform_plan(self.cluster_ids, self.config.k, size, rng)
        else:
            indices = rng.permutation(self.source.num_images)[:size]
        rotations = np.zeros(size, np.int32)
        if self.config.rotation:
            rotations = rng.integers(0, hierarchy.NUM_ROTATIONS, size)
        self.tables.set_plan(indices, rotations, epoch)

    def _report(self, cycle: int) -> None:
        stats = self.assignment.stats
        self._new_stats = {key: value for key, value in stats.items() if np.isscalar(value)}
        summary = ", ".join(f"{key}={value:.4g}" for key, value in sorted(self._new_stats.items()))
        self.log(f"clustering: cycle {cycle}: {summary}")
        if self.writer is not None:
            sizes = np.bincount(self.cluster_ids, minlength=self.config.k)
            with self.writer.as_default(step=cycle):
                tf.summary.histogram("cluster_sizes", sizes)
                for key, value in self._new_stats.items():
                    tf.summary.scalar(f"clustering/{key}", value)
            self.writer.flush()


class CheckpointCallback(keras.callbacks.Callback):
    """Saves model and optimizer after every epoch, so a rerun resumes at the next one."""

    def __init__(self, training_checkpoints: checkpoints.TrainingCheckpoints):
        super().__init__()
        self.training_checkpoints = training_checkpoints

    def on_epoch_end(self, epoch, logs=None):
        self.training_checkpoints.save(epoch + 1)


class MetricsFile(keras.callbacks.Callback):
    """Appends each epoch's figures as one JSON line (machine-readable twin of TensorBoard)."""

    def __init__(self, path: str, first_epoch: int):
        super().__init__()
        self.path = path
        _drop_epochs_from(path, first_epoch)

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, **{key: float(value) for key, value in (logs or {}).items()}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


def _drop_epochs_from(path: str, first_epoch: int) -> None:
    """Forgets lines of epochs a resumed run will redo, so every epoch appears once."""
    if not os.path.exists(path):
        return
    with open(path) as handle:
        lines = [line for line in handle if line.strip() and json.loads(line)["epoch"] <= first_epoch]
    checkpoints.atomic_write_bytes(path, "".join(lines).encode())
