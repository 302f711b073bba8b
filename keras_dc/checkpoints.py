"""The workdir on disk: atomic writes, training checkpoints and per-cycle assignments.

Layout of a workdir:
    config.json                   every setting of the run
    checkpoints/                  tf.train.Checkpoint of model + optimizer, one per epoch
    assignments/cycle_NNNN.npz    super/sub ids, PCA and statistics of each re-clustering
    metrics.jsonl                 one JSON line per epoch
    tensorboard/                  TensorBoard logs
    backbone.keras, backbone.json the exported feature extractor and its description
Files are written to a temporary name, flushed, fsynced and renamed, so a
killed run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile

import numpy as np
import tensorflow as tf


def atomic_write_bytes(path: str, payload: bytes) -> None:
    """Writes `payload` to `path` so that readers never see a partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path))
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_json(path: str, value) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=2, sort_keys=True).encode())


def read_json(path: str):
    with open(path) as handle:
        return json.load(handle)


def save_npz(path: str, **arrays: np.ndarray) -> None:
    """Atomic np.savez; refuses object arrays so that loading never needs pickle."""
    for name, array in arrays.items():
        if np.asarray(array).dtype == object:
            raise TypeError(f"{name} is an object array; it would need pickle to load")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def assignment_path(workdir: str, cycle: int) -> str:
    return os.path.join(workdir, "assignments", f"cycle_{cycle:04d}.npz")


class TrainingCheckpoints:
    """Model, optimizer and dropout-RNG state after each epoch, restored on rerun.

    The dropout seed-generator states are saved too: without them a resumed run
    would draw other dropout masks than an uninterrupted one.
    """

    def __init__(self, workdir: str, model, max_to_keep: int = 2):
        seed_states = [variable for variable in model.variables if "seed_generator_state" in variable.path]
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, seed_states=seed_states)
        self.manager = tf.train.CheckpointManager(self.checkpoint, os.path.join(workdir, "checkpoints"),
                                                  max_to_keep=max_to_keep)

    def restore(self) -> int:
        """Restores the latest checkpoint; returns the number of epochs it had completed."""
        latest = self.manager.latest_checkpoint
        if latest is None:
            return 0
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        return int(latest.rsplit("-", 1)[1])

    def save(self, epochs_done: int) -> str:
        return self.manager.save(checkpoint_number=epochs_done)
