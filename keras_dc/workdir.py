"""The workdir of a run: every path and file in it, and the only code that reads or writes them.

Layout of a workdir:
    config.json                   every setting of the run (Config), its data and image count
    data_index.npz                the image files of a folder --data, in index order, with their sizes
    .lock                         held (flock) by the run using the workdir: its host, pid and start time
    checkpoints/                  tf.train.Checkpoint of model + optimizer, one per epoch
                                  (and one at the current batch on pre-emption)
    assignments/cycle_NNNN.npz    super/sub ids, PCA and statistics of each re-clustering
    metrics.jsonl                 one JSON line per epoch
    tensorboard/                  TensorBoard logs
    feature_cache/                features cached while clustering (unless elsewhere)
    backbone.keras, backbone.json the exported feature extractor and its description
    cluster_grids/                PNG grids of tools/visualize_clusters.py
Files are written to a temporary name, flushed, fsynced and renamed, so a
killed run leaves either the old file or the new one, never half of one.
Checkpoints are fsynced before tf.train.CheckpointManager records them in
checkpoints/checkpoint (itself replaced by a rename), so a kill in the middle
of a save leaves the previous checkpoint the latest one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import glob
import io
import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from keras_dc import hierarchy
from keras_dc.config import Config
from keras_dc.pca import PCA
from keras_dc.sources import DataIndex


class WorkdirError(ValueError):
    """A workdir lacks a file it should hold, or holds one this run cannot use."""


class WorkdirLocked(WorkdirError):
    """Another run is using the workdir."""


def atomic_write_bytes(path: str, payload: bytes) -> None:
    """Writes `payload` to `path` so that readers never see a partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path))
    try:
        with os.fdopen(handle, "wb") as stream:
            os.fchmod(stream.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; users expect 0644
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        fsync_path(folder)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: str) -> None:
    """Flushes a file, or a folder's entries (a rename), to disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


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


def config_path(workdir: str) -> str:
    return os.path.join(workdir, "config.json")


def checkpoints_dir(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints")


def assignment_path(workdir: str, cycle: int) -> str:
    return os.path.join(workdir, "assignments", f"cycle_{cycle:04d}.npz")


def lock_path(workdir: str) -> str:
    return os.path.join(workdir, ".lock")


@contextlib.contextmanager
def locked(workdir: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Holds the workdir's lock while a run uses it; a WorkdirLocked naming the holder when another
    run holds it. The lock is an flock, so the kernel releases it when its process dies however it
    dies; the file names the holder (host, pid, start) until the holder releases it, so a lock left
    by a killed run is taken over with a line that says so."""
    os.makedirs(workdir, exist_ok=True)
    try:
        handle = os.open(lock_path(workdir), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise WorkdirError(f"cannot open the lock file {lock_path(workdir)}: {error.strerror}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirLocked(f"{workdir} is in use by another run ({_holder(handle) or 'holder unknown'}); "
                                f"wait for it to end or use another workdir") from None
        previous = _holder(handle)
        if previous:
            log(f"workdir: taking over the lock of {previous}, which ended without releasing it")
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(handle, 0)
        os.pwrite(handle, json.dumps(me).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(handle, 0)
    finally:
        os.close(handle)


def _holder(handle: int) -> str:
    """The holder recorded in an open lock file, in words ("" when none is)."""
    try:
        holder = json.loads(os.pread(handle, 4096, 0) or b"null")
        return f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}" if holder else ""
    except (ValueError, TypeError, KeyError):
        return "holder unreadable"


def data_index_path(workdir: str) -> str:
    return os.path.join(workdir, "data_index.npz")


def save_data_index(workdir: str, index: DataIndex) -> None:
    """Records the image files a run indexed (names joined by NUL, which no file name holds)."""
    names = np.frombuffer("\0".join(index.names).encode("utf-8"), np.uint8)
    save_npz(data_index_path(workdir), names_utf8=names, file_bytes=np.asarray(index.file_bytes, np.int64))


def data_index(workdir: str) -> DataIndex | None:
    """The image files the workdir's run indexed, or None (not a folder, or a workdir of an older version)."""
    path = data_index_path(workdir)
    if not os.path.exists(path):
        return None
    try:
        arrays = load_npz(path)
        names = tuple(arrays["names_utf8"].tobytes().decode("utf-8").split("\0"))
    except (OSError, ValueError, KeyError) as error:
        raise WorkdirError(f"cannot read {path} ({error}); restore it or use another workdir") from None
    if len(names) != len(arrays["file_bytes"]):
        raise WorkdirError(f"{path} is damaged: {len(names)} names for {len(arrays['file_bytes'])} sizes")
    return DataIndex(names, arrays["file_bytes"])


def metrics_path(workdir: str) -> str:
    return os.path.join(workdir, "metrics.jsonl")


def tensorboard_dir(workdir: str, *parts: str) -> str:
    return os.path.join(workdir, "tensorboard", *parts)


def feature_cache_dir(workdir: str) -> str:
    return os.path.join(workdir, "feature_cache")


def grids_dir(workdir: str) -> str:
    return os.path.join(workdir, "cluster_grids")


def backbone_path(workdir: str) -> str:
    return os.path.join(workdir, "backbone.keras")


def backbone_description_path(workdir: str) -> str:
    return os.path.join(workdir, "backbone.json")


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """What config.json records: the settings, the data's description and its readable image count."""

    config: Config
    source: str
    num_images: int | None
    recorded: frozenset[str] = frozenset()  # the settings the file holds (older files hold fewer)


def write_config(workdir: str, config: Config, source: str, num_images: int) -> None:
    """Records the run's settings and data, read back by saved_run."""
    write_json(config_path(workdir), {**config.to_dict(), "source": source, "num_images": num_images})


def saved_run(workdir: str) -> SavedRun | None:
    """The workdir's recorded settings, or None before the first run has written them."""
    path = config_path(workdir)
    if not os.path.exists(path):
        return None
    try:
        values = read_json(path)
    except (OSError, json.JSONDecodeError) as error:
        raise WorkdirError(f"cannot read {path}: {error}") from None
    return SavedRun(Config.from_dict(values), values.get("source", ""), values.get("num_images"),
                    frozenset(values))


def read_run(workdir: str) -> SavedRun:
    """The recorded settings of a training workdir; a WorkdirError when it has none."""
    run = saved_run(workdir)
    if run is None:
        raise WorkdirError(f"{config_path(workdir)} does not exist; is this a training workdir?")
    return run


@dataclasses.dataclass
class Assignment:
    """The pseudo-labels of one cycle: super-cluster and local sub-cluster of every image."""

    super_ids: np.ndarray
    sub_ids: np.ndarray
    stats: dict
    pca: PCA | None = None

    def cluster_ids(self, sub_classes: int) -> np.ndarray:
        return hierarchy.global_cluster_ids(self.super_ids.astype(np.int64), self.sub_ids, sub_classes)

    def save(self, path: str) -> None:
        arrays = {"super_ids": self.super_ids.astype(np.int32), "sub_ids": self.sub_ids.astype(np.int32),
                  "stats_json": np.array(json.dumps(self.stats))}
        if self.pca is not None:
            arrays.update(self.pca.to_arrays())
        save_npz(path, **arrays)

    @classmethod
    def load(cls, path: str) -> Assignment:
        arrays = load_npz(path)
        pca = PCA.from_arrays(arrays) if "pca_mean" in arrays else None
        return cls(arrays["super_ids"], arrays["sub_ids"], json.loads(str(arrays["stats_json"])), pca)


def saved_cycles(workdir: str) -> list[int]:
    """The cycles whose assignments are saved in the workdir, in order."""
    paths = glob.glob(os.path.join(glob.escape(workdir), "assignments", "cycle_*.npz"))
    return sorted(int(os.path.basename(path)[len("cycle_"):-len(".npz")]) for path in paths)


def latest_assignment(workdir: str, first: bool = False) -> tuple[int, Assignment] | None:
    """(cycle, assignments) of the most recent (with `first`, the earliest) saved cycle, if any."""
    cycles = saved_cycles(workdir)
    if not cycles:
        return None
    cycle = cycles[0 if first else -1]
    return cycle, Assignment.load(assignment_path(workdir, cycle))


def save_backbone(workdir: str, backbone, description: dict) -> str:
    """Exports the feature extractor as backbone.keras (renamed into place) with its description."""
    path = backbone_path(workdir)
    temporary = path + ".tmp.keras"
    backbone.save(temporary)
    os.replace(temporary, path)
    write_json(backbone_description_path(workdir), description)
    return path


def existing_backbone(workdir: str) -> str:
    """The path of the workdir's exported backbone; a WorkdirError before training has finished."""
    path = backbone_path(workdir)
    if not os.path.isfile(path):
        raise WorkdirError(f"{path} does not exist (a workdir has one once training has finished)")
    return path


@dataclasses.dataclass(frozen=True)
class Position:
    """How far training got: `epoch` epochs complete, plus `step` batches of the next one."""

    epoch: int
    step: int = 0


def sync_checkpoint(prefix: str) -> None:
    """Flushes a written checkpoint's files and folder to disk, before anything points at it."""
    for path in glob.glob(glob.escape(prefix) + ".*"):
        fsync_path(path)
    fsync_path(os.path.dirname(prefix))


class TrainingCheckpoints:
    """Model, optimizer, dropout-RNG state, running metrics and position, restored on rerun.

    The dropout seed-generator states are saved too: without them a resumed run
    would draw other dropout masks than an uninterrupted one. The running metrics
    let a run resumed mid-epoch report that epoch's figures over all its batches.
    Checkpoint numbers count batches: epoch * steps_per_epoch + step.
    """

    def __init__(self, workdir: str, model, steps_per_epoch: int, max_to_keep: int = 2):
        seed_states = [variable for variable in model.variables if "seed_generator_state" in variable.path]
        self.metric_variables = [variable for metric in model.metrics for variable in metric.variables]
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="position_epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="position_step")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, seed_states=seed_states,
                                              metrics=self.metric_variables, epoch=self.epoch, step=self.step)
        self.manager = tf.train.CheckpointManager(self.checkpoint, checkpoints_dir(workdir),
                                                  max_to_keep=max_to_keep)
        self.steps_per_epoch = steps_per_epoch
        self.restored_metrics: list[np.ndarray] = []

    def restore(self) -> Position:
        """Restores the latest checkpoint, if any; returns where it stopped."""
        latest = self.manager.latest_checkpoint
        if latest is None:
            return Position(0)
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            reason = str(error).strip().splitlines()[0][:200]
            raise WorkdirError(f"cannot resume from {latest} ({reason}): it was written with another "
                               f"configuration or is damaged; use another workdir") from None
        self.restored_metrics = [variable.numpy() for variable in self.metric_variables]
        return Position(int(self.epoch.numpy()), int(self.step.numpy()))

    def put_back_metrics(self) -> None:
        """Sets the running metrics to their restored values (fit() resets them when an epoch begins)."""
        for variable, value in zip(self.metric_variables, self.restored_metrics):
            variable.assign(value)

    def save(self, position: Position) -> str:
        """Saves the current state as reached at `position`; durable once this returns."""
        self.epoch.assign(position.epoch)
        self.step.assign(position.step)
        options = tf.train.CheckpointOptions(experimental_write_callbacks=[sync_checkpoint])
        return self.manager.save(checkpoint_number=position.epoch * self.steps_per_epoch + position.step,
                                 options=options)
