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
    settings_history.jsonl        one JSON line per resume that changed a setting
    cluster_grids/                PNG grids of tools/visualize_clusters.py
    set_aside/                    damaged files (and checkpoints newer than the one resumed from),
                                  moved here, never deleted
Files are written to a new, unpredictable temporary name, flushed, fsynced and
renamed, so a killed run leaves either the old file or the new one, never half
of one, and no link planted in the workdir is written through (a run taking the
lock also removes the links where it writes, and the caches a killed run left).
Checkpoints are fsynced before tf.train.CheckpointManager records them in
checkpoints/checkpoint (itself replaced by a rename), so a kill in the middle
of a save leaves the previous checkpoint the latest one. A file found damaged
anyway (a disk error, a copy cut short) is reported in one line and set aside;
a run resumes from the newest checkpoint that reads back whole and finite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import glob
import io
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import tensorflow as tf

from keras_dc import hierarchy
from keras_dc.config import Config, naming_file
from keras_dc.pca import PCA
from keras_dc.sources import DataIndex


class WorkdirError(ValueError):
    """A workdir lacks a file it should hold, or holds one this run cannot use."""


class StorageError(OSError):
    """A workdir file cannot be written, or read back whole (disk full, no permission, damaged file)."""


WRITE_ADVICE = "free space or fix permissions and rerun: the run resumes from its last checkpoint"


class Diverged(RuntimeError):
    """Training reached a non-finite loss or state; nothing of that state was saved."""


class WorkdirLocked(WorkdirError):
    """Another run is using the workdir."""


@contextlib.contextmanager
def replacing(path: str, suffix: str = "", durable: bool = True) -> Iterator[str]:
    """A new file for the block to write, renamed to `path` once it has (and, `durable`, fsynced), so that
    readers never see a partial file; removed if the block fails.

    The file has an unpredictable name (mkstemp: O_EXCL, so no planted link is followed) in the
    target's folder, and the rename replaces a link at `path`, never its target.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path), suffix=suffix)
    os.close(handle)
    try:
        with naming_file(path):
            yield temporary
            os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; users expect 0644
            if durable:
                fsync_path(temporary)
            os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    if durable:
        fsync_path(folder)


def atomic_write_bytes(path: str, payload: bytes, durable: bool = True) -> None:
    """Writes `payload` to `path` through `replacing`."""
    with replacing(path, durable=durable) as temporary:
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW), "wb") as stream:
            stream.write(payload)


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


def checkpoints_dir(workdir: str, group: int = 0) -> str:
    """Where checkpoints are: group 0's (and a run without head groups') in checkpoints/, each other
    group of replicas' in checkpoints/group_<g>/, written by the group's first replica."""
    folder = os.path.join(workdir, "checkpoints")
    return os.path.join(folder, f"group_{group}") if group else folder


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
        remove_links(workdir, log)
        remove_stale_caches(workdir, log)
        try:
            yield
        finally:
            os.ftruncate(handle, 0)
    finally:
        os.close(handle)


WRITTEN_FOLDERS = ("checkpoints", "assignments", "tensorboard", "feature_cache", "cluster_grids", "set_aside")
WRITTEN_FILES = ("config.json", "data_index.npz", "metrics.jsonl", "backbone.keras", "backbone.json",
                 "settings_history.jsonl")


def remove_links(workdir: str, log: Callable[[str], None] = print) -> None:
    """Removes every symbolic link where a run writes (the folders and files of the layout, and all
    inside those folders), one line each: a write never follows a link planted in the workdir, so
    nothing is written outside it. A link holds no data; the line names its target."""
    for name in (*WRITTEN_FOLDERS, *WRITTEN_FILES):
        path = os.path.join(workdir, name)
        links = [path] if os.path.islink(path) else []
        if name in WRITTEN_FOLDERS and not links:
            for folder, folders, files in os.walk(path):  # never enters a linked folder
                links += [os.path.join(folder, entry) for entry in [*folders, *files]
                          if os.path.islink(os.path.join(folder, entry))]
        for link in links:
            target = os.readlink(link)
            os.remove(link)
            log(f"workdir: removed the link {link} -> {target}: a run writes only files of its own")


def remove_stale_caches(workdir: str, log: Callable[[str], None] = print) -> None:
    """Removes the feature caches (feature_cache/kdc_features_*) that a killed run left: the lock proves
    that no run of this workdir uses them any more."""
    stale = glob.glob(os.path.join(glob.escape(feature_cache_dir(workdir)), "kdc_features_*"))
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    if stale:
        log(f"workdir: removed {len(stale)} feature cache folder(s) a stopped run left in "
            f"{feature_cache_dir(workdir)}")


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
    """Records the image files a run indexed (each path followed by a NUL, which no file name holds)
    and those that failed to read or decode so far."""
    save_npz(data_index_path(workdir), names_utf8=index.names_utf8, file_bytes=np.asarray(index.file_bytes, np.int64),
             failed=index.failed)


def data_index(workdir: str) -> DataIndex | None:
    """The image files the workdir's run indexed, or None (not a folder, or a workdir of an older version).
    An index of an earlier version (paths joined by NUL, none known to fail) reads as well."""
    path = data_index_path(workdir)
    if not os.path.exists(path):
        return None
    try:
        arrays = load_npz(path)
        names = arrays["names_utf8"]
        if len(names) and names[-1] != 0:
            names = np.append(names, np.uint8(0))
        index = DataIndex.from_blob(names, arrays["file_bytes"], arrays.get("failed"))
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise WorkdirError(f"{path} is damaged ({_reason(error)}); restore it, or rerun with --reindex_data to "
                           f"index the folder again and re-cluster") from None
    if len(index.starts) - 1 != len(index) or len(index.failed) != len(index):
        raise WorkdirError(f"{path} is damaged ({len(index.starts) - 1} names for {len(index)} sizes); restore it, or "
                           f"rerun with --reindex_data to index the folder again and re-cluster")
    return index


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


def settings_history_path(workdir: str) -> str:
    return os.path.join(workdir, "settings_history.jsonl")


def set_aside_dir(workdir: str) -> str:
    return os.path.join(workdir, "set_aside")


def set_aside(workdir: str, path: str) -> str:
    """Moves a workdir file out of the run's way into set_aside/ (same relative path, never overwriting
    an earlier one) and returns where it went: damaged files are kept for inspection, never deleted."""
    relative = os.path.relpath(path, workdir)
    target = os.path.join(set_aside_dir(workdir), relative)
    number = 0
    while os.path.exists(target):
        number += 1
        target = os.path.join(set_aside_dir(workdir), f"{relative}.{number}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(path, target)
    fsync_path(os.path.dirname(path))
    return target


def record_setting_changes(workdir: str, position: Position, changes: dict[str, list]) -> None:
    """Appends one line to settings_history.jsonl: when (after which epoch and batch) which settings
    changed, [old, new]; earlier lines are never rewritten."""
    path = settings_history_path(workdir)
    previous = open(path, "rb").read() if os.path.exists(path) else b""
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "after_epoch": position.epoch,
                       "after_batch": position.step, "changes": changes}, sort_keys=True)
    atomic_write_bytes(path, previous + line.encode() + b"\n")


def read_metrics(workdir: str, last_epoch: int, log: Callable[[str], None] = print) -> list[str]:
    """The lines of metrics.jsonl for epochs 1..last_epoch (a resumed run redoes the others). A file with
    a damaged line (a copy cut short) is set aside whole, reported, and the intact lines are written back."""
    path = metrics_path(workdir)
    if not os.path.exists(path):
        return []
    kept, damaged = [], 0
    with open(path, "rb") as handle:  # bytes: a line that is not UTF-8 text is damaged, not an error
        for line in filter(bytes.strip, handle):
            try:
                epoch = json.loads(line)["epoch"]
                if epoch <= last_epoch:
                    kept.append(line.decode().rstrip("\n") + "\n")
            except (ValueError, KeyError, TypeError):
                damaged += 1
    if damaged:
        where = set_aside(workdir, path)
        atomic_write_bytes(path, "".join(kept).encode())
        log(f"workdir: {path} had {damaged} damaged line(s); kept its {len(kept)} intact ones, the file "
            f"as found is in {where}")
    return kept


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
        wrong = [] if isinstance(values, dict) else ["the file"]
        wrong += [name for name, default in dataclasses.asdict(Config()).items() if name in values and not
                  isinstance(values[name], type(default) if type(default) is not float else (int, float))]
    except (OSError, ValueError) as error:  # ValueError: not JSON, or not UTF-8 text
        values, wrong = {}, [_reason(error)]
    if wrong:
        raise WorkdirError(f"cannot read {path}: damaged, not a JSON object of settings ({', '.join(wrong[:3])}); "
                           f"restore it, or move it away to resume with this run's flags") from None
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
        """The saved assignments; a StorageError naming the file when it does not read back whole."""
        try:
            arrays = load_npz(path)
            pca = PCA.from_arrays(arrays) if "pca_mean" in arrays else None
            return cls(arrays["super_ids"], arrays["sub_ids"], json.loads(str(arrays["stats_json"])), pca)
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
            if isinstance(error, FileNotFoundError):
                raise
            raise StorageError(f"{path} is damaged ({_reason(error)})") from None


def _reason(error: BaseException) -> str:
    """The first line of an error's message, short enough for a one-line report."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]


def assignment_problem(workdir: str, cycle: int, missing: bool = False) -> str | None:
    """Why the saved assignments of `cycle` cannot be used (damaged, or with `missing` absent), or None
    (intact, or never saved)."""
    path = assignment_path(workdir, cycle)
    if not os.path.exists(path):
        return f"{path}, which is missing" if missing else None
    try:
        Assignment.load(path)
    except StorageError as error:
        return str(error)
    return None


def set_aside_damaged_assignments(workdir: str, log: Callable[[str], None] = print) -> None:
    """Moves every damaged assignments file to set_aside/, one line each: a cycle that has none
    is clustered again when it starts, an earlier one is no longer compared with."""
    for cycle in saved_cycles(workdir):
        problem = assignment_problem(workdir, cycle)
        if problem:
            where = set_aside(workdir, assignment_path(workdir, cycle))
            log(f"workdir: {problem}; moved to {where}")


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
    """Exports the feature extractor as backbone.keras (written whole to a new, unpredictable name, fsynced
    and renamed into place, so that no link planted in the workdir is followed) with its description."""
    path = backbone_path(workdir)
    with replacing(path, suffix=".keras") as temporary:
        backbone.save(temporary)
    write_json(backbone_description_path(workdir), description)
    return path


def load_backbone(path: str):
    """The saved feature extractor; a StorageError naming the file when it does not load (damaged)."""
    import keras

    try:
        return keras.models.load_model(path)
    except FileNotFoundError:
        raise
    except Exception as error:  # a cut-short .keras fails in zipfile, h5py or JSON parsing alike
        if "safe_mode" in str(error):
            raise StorageError(f"{path} refused: it holds an unsafe layer (a Lambda, whose code would run when "
                               f"loaded); use a backbone exported by tools/train.py") from None
        raise StorageError(f"{path} is damaged ({_reason(error)}); rerun tools/train.py with the run's "
                           f"flags to export it again") from None


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


CHECKPOINT_NAME = "ckpt"  # tf.train.CheckpointManager's file names: ckpt-NUMBER.index, ckpt-NUMBER.data-*
# How a checkpoint that does not fit this run's objects fails (as opposed to one that is damaged).
MISMATCH_ERRORS = (AssertionError, ValueError)


@contextlib.contextmanager
def _quiet_tensorflow() -> Iterator[None]:
    """Silences TensorFlow's warnings (a damaged state file is reported here, in one line)."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _checkpoints_on_disk(folder: str) -> list[str]:
    """Prefixes of the checkpoints whose index file is in `folder`, newest (highest number) first."""
    pattern = re.compile(re.escape(CHECKPOINT_NAME) + r"-(\d+)\.index$")
    numbers = [int(match.group(1)) for match in map(pattern.match, os.listdir(folder) if os.path.isdir(folder) else [])
               if match]
    return [os.path.join(folder, f"{CHECKPOINT_NAME}-{number}") for number in sorted(numbers, reverse=True)]


def _write_checkpoint_state(folder: str, latest: str, kept: list[str]) -> None:
    """Writes checkpoints/checkpoint (tf.train.CheckpointManager's text state) naming `latest` and the
    `kept` prefixes, oldest first, with their files' times, so that the manager rotates them as usual."""
    times = [os.path.getmtime(prefix + ".index") for prefix in kept]
    lines = [f'model_checkpoint_path: "{os.path.basename(latest)}"']
    lines += [f'all_model_checkpoint_paths: "{os.path.basename(prefix)}"' for prefix in kept]
    lines += [f"all_model_checkpoint_timestamps: {value!r}" for value in times]
    lines.append(f"last_preserved_timestamp: {min(times, default=time.time()) - 1.0!r}")
    atomic_write_bytes(os.path.join(folder, "checkpoint"), ("\n".join(lines) + "\n").encode())


class CheckpointPeers(Protocol):
    """The other groups of replicas, each restoring from its own folder (keras_dc.train)."""

    def common(self, numbers: list[int]) -> set[int]:
        """The checkpoint numbers that every group has on disk, given this group's."""

    def agree(self, number: int) -> bool:
        """Whether every replica restored checkpoint `number` (-1: none)."""


class TrainingCheckpoints:
    """Model, optimizer, dropout-RNG state, running metrics and position, restored on rerun.

    The dropout seed-generator states are saved too: without them a resumed run
    would draw other dropout masks than an uninterrupted one. The running metrics
    let a run resumed mid-epoch report that epoch's figures over all its batches.
    Checkpoint numbers count batches: epoch * steps_per_epoch + step. A state with
    a non-finite value is never written (Diverged), and restoring skips checkpoints
    that do not read back whole and finite.
    """

    def __init__(self, workdir: str, model, steps_per_epoch: int, max_to_keep: int = 2, group: int = 0):
        seed_states = [variable for variable in model.variables if "seed_generator_state" in variable.path]
        self.metric_variables = [variable for metric in model.metrics for variable in metric.variables]
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="position_epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="position_step")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, seed_states=seed_states,
                                              metrics=self.metric_variables, epoch=self.epoch, step=self.step)
        self.saved_variables = [*model.variables, *model.optimizer.variables, *self.metric_variables]
        self.model = model
        self.workdir = workdir
        self.folder = checkpoints_dir(workdir, group)
        self.max_to_keep = max_to_keep
        self.manager = self._manager()
        self.steps_per_epoch = steps_per_epoch
        self.restored_metrics: list[np.ndarray] = []

    def _manager(self) -> tf.train.CheckpointManager:
        """tf.train.CheckpointManager of the folder; a state file that TensorFlow fails to read with a
        traceback (empty, or not text) is first moved to set_aside/, and rebuilt when the run restores."""
        folder = checkpoints_dir(self.workdir)
        try:
            with _quiet_tensorflow():
                tf.train.get_checkpoint_state(folder)
        except ValueError:  # UnicodeDecodeError is one
            state = os.path.join(folder, "checkpoint")
            with contextlib.suppress(FileNotFoundError):  # another worker of the run moved it first
                print(f"workdir: {state} is damaged; moved to {set_aside(self.workdir, state)}, rebuilt from "
                      f"the checkpoints on disk")
        with _quiet_tensorflow():
            return tf.train.CheckpointManager(self.checkpoint, self.folder, max_to_keep=self.max_to_keep)

    def non_finite_variables(self) -> list[str]:
        """Paths of the saved floating-point variables holding a NaN or an infinity."""
        return [variable.path for variable in self.saved_variables
                if tf.as_dtype(variable.dtype).is_floating and not bool(tf.reduce_all(tf.math.is_finite(variable)))]

    def restore(self, problem: Callable[[Position], str | None] = lambda position: None,
                log: Callable[[str], None] = print, chief: bool = True, peers: CheckpointPeers | None = None
                ) -> Position:
        """Restores the newest checkpoint on disk that reads back whole, holds only finite values and
        for which `problem(position)` finds nothing missing; returns where it stopped.

        Checkpoints newer than that one are reported in one line each and (by the chief) set aside,
        and the state file is rebuilt when it was damaged or named another. A checkpoint written for
        other objects is a WorkdirError; when no checkpoint is usable, a StorageError; in both cases
        nothing is moved. With `peers` (groups of replicas, each with its own folder) only checkpoints
        that every group has are candidates, and all must restore the same one.
        """
        rejected: list[tuple[str, str]] = []
        on_disk = _checkpoints_on_disk(self.folder)
        common = peers.common([_number(prefix) for prefix in on_disk]) if peers else None
        chosen = None
        for prefix in on_disk:
            if common is not None and _number(prefix) not in common:
                rejected.append((prefix, "is not in every group of replicas' checkpoints (one was stopped "
                                         "before writing it)"))
                continue
            reason = self._load(prefix)
            position = Position(int(self.epoch.numpy()), int(self.step.numpy()))
            reason = reason or problem(position)
            if reason is None:
                chosen = prefix
                break
            rejected.append((prefix, reason))
        if peers and not peers.agree(_number(chosen) if chosen else -1):
            raise StorageError(f"the groups of replicas found different usable checkpoints (this one: "
                               f"{chosen or 'none'} in {self.folder}); nothing was moved: restore the files or use "
                               f"another --workdir")
        if chosen is not None:
            if chief:
                self._settle(chosen, rejected, log)
            self.restored_metrics = [variable.numpy() for variable in self.metric_variables]
            return position
        damaged = [(prefix, reason) for prefix, reason in rejected if common is None or _number(prefix) in common]
        if damaged:
            prefix, reason = damaged[0]
            raise StorageError(f"no usable checkpoint in {self.folder}: the newest, {prefix}, "
                               f"{reason}; {len(damaged)} tried, nothing was moved: restore the files or use "
                               f"another --workdir")
        return Position(0)

    def _load(self, prefix: str) -> str | None:
        """Restores `prefix`; None if it read back whole and finite, else why not. A checkpoint of
        other objects (another configuration) is a WorkdirError."""
        try:
            self.checkpoint.restore(prefix).assert_existing_objects_matched()
        except MISMATCH_ERRORS as error:
            raise WorkdirError(f"cannot resume from {prefix} ({_reason(error)}): it was written with another "
                               f"configuration or is damaged; use another workdir") from None
        except (tf.errors.OpError, OSError, IndexError) as error:
            return f"is damaged ({_reason(error)})"
        non_finite = self.non_finite_variables()
        if non_finite:
            return f"holds non-finite values ({len(non_finite)} variables, e.g. {non_finite[0]})"
        return None

    def _settle(self, chosen: str, rejected: list[tuple[str, str]], log: Callable[[str], None]) -> None:
        """Sets aside the rejected checkpoints and, if needed, rebuilds the state file around `chosen`."""
        for prefix, reason in rejected:
            for path in glob.glob(glob.escape(prefix) + ".*"):
                where = set_aside(self.workdir, path)
            log(f"workdir: {prefix} {reason}; moved to {os.path.dirname(where)}, resuming from {chosen}")
        folder = self.folder
        state = os.path.join(folder, "checkpoint")
        with _quiet_tensorflow():
            recorded = tf.train.get_checkpoint_state(folder) if os.path.exists(state) else None
        if os.path.exists(state) and recorded is None:
            log(f"workdir: {state} is damaged; moved to {set_aside(self.workdir, state)}, rebuilt from the "
                f"checkpoints on disk")
        if recorded is None or recorded.model_checkpoint_path != chosen or rejected:
            kept = [prefix for prefix in reversed(_checkpoints_on_disk(folder))
                    if _number(prefix) <= _number(chosen)][-self.max_to_keep:]
            _write_checkpoint_state(folder, chosen, kept)
            self.manager = self._manager()

    def elsewhere(self, folder: str) -> TrainingCheckpoints:
        """The same state, saved in another folder (a non-chief worker's), with the metrics restored here:
        every worker must put them back alike, as assigning them is a collective under several workers."""
        other = TrainingCheckpoints(folder, self.model, self.steps_per_epoch, self.max_to_keep)
        other.restored_metrics = self.restored_metrics
        return other

    def put_back_metrics(self) -> None:
        """Sets the running metrics to their restored values (fit() resets them when an epoch begins)."""
        for variable, value in zip(self.metric_variables, self.restored_metrics):
            variable.assign(value)

    def save(self, position: Position) -> str:
        """Saves the current state as reached at `position`; durable once this returns. Refuses a
        non-finite state (Diverged) and reports a failed write as a StorageError."""
        non_finite = self.non_finite_variables()
        if non_finite:
            when = (f"at epoch {position.epoch + 1}, batch {position.step}" if position.step
                    else f"by the end of epoch {position.epoch}")
            raise Diverged(f"the weights became non-finite {when} ({len(non_finite)} variables, e.g. "
                           f"{non_finite[0]}); that state was not saved, the latest checkpoint is the last "
                           f"finite one")
        self.epoch.assign(position.epoch)
        self.step.assign(position.step)
        options = tf.train.CheckpointOptions(experimental_write_callbacks=[sync_checkpoint])
        try:
            return self.manager.save(checkpoint_number=position.epoch * self.steps_per_epoch + position.step,
                                     options=options)
        except tf.errors.OpError as error:
            raise StorageError(f"cannot write a checkpoint in {self.folder} "
                               f"({_reason(error)}); {WRITE_ADVICE}") from None


def _number(prefix: str) -> int:
    return int(prefix.rsplit("-", 1)[1])
