"""Runs tools/train.py and sends this process a signal at an exact point, for the kill-and-resume tests.

    python tests/fault_driver.py POINT COUNT SIGNAL [train.py flags...]

SIGNAL (KILL or TERM) is sent the COUNT-th time the run reaches POINT:
    batch       the end of a training batch
    extract     a batch of feature extraction leaving the input pipeline
    kmeans      the start of a flat k-means (kmeans.kmeans), after the PCA; the
                hierarchical k-means runs one for the super-clusters, then all sub-clusters at once
    checkpoint  a checkpoint's files written, not yet recorded; they are first cut to half
                their size, as a kill in the middle of writing them would leave them
    none        never
Or, instead of a signal (SIGNAL is then ignored), the COUNT-th time:
    nospace     a workdir file is written (workdir.atomic_write_bytes): OSError ENOSPC, a full disk
    denied      a checkpoint is written: TensorFlow's PermissionDeniedError, an unwritable checkpoints/
The library is patched from here, so that it carries no test hooks.
"""

import errno
import glob
import os
import runpy
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tensorflow as tf  # noqa: E402

import keras  # noqa: E402
from keras_dc import data, kmeans, train, workdir  # noqa: E402


class Trigger:
    """Counts arrivals at the point and signals this process at the chosen one."""

    def __init__(self, count: int, signal_name: str):
        self.count = count
        self.signum = getattr(signal, f"SIG{signal_name}")
        self.seen = 0

    def arrive(self) -> None:
        self.seen += 1
        if self.seen == self.count:
            os.kill(os.getpid(), self.signum)


class BatchTrigger(keras.callbacks.Callback):
    def __init__(self, trigger: Trigger):
        super().__init__()
        self.trigger = trigger

    def on_train_batch_end(self, batch, logs=None):
        self.trigger.arrive()


def patch(point: str, trigger: Trigger) -> None:
    if point == "batch":
        run_callbacks = train.run_callbacks
        train.run_callbacks = lambda *args: run_callbacks(*args) + [BatchTrigger(trigger)]
    elif point == "extract":
        clustering_dataset = data.clustering_dataset

        def counted(*args, **kwargs):
            def arrive(batch):
                trigger.arrive()
                return batch

            return clustering_dataset(*args, **kwargs).map(
                lambda batch: tf.ensure_shape(tf.numpy_function(arrive, [batch], tf.float32), batch.shape))

        data.clustering_dataset = counted
    elif point == "kmeans":
        flat_kmeans = kmeans.kmeans

        def counted(*args, **kwargs):
            trigger.arrive()
            return flat_kmeans(*args, **kwargs)

        kmeans.kmeans = counted
    elif point == "checkpoint":
        sync = workdir.sync_checkpoint

        def damaged(prefix):
            if trigger.seen + 1 == trigger.count:
                for path in glob.glob(prefix + ".*"):
                    os.truncate(path, os.path.getsize(path) // 2)
            trigger.arrive()
            sync(prefix)

        workdir.sync_checkpoint = damaged
    elif point == "nospace":
        write = workdir.atomic_write_bytes

        def full(path, payload):
            trigger.seen += 1
            if trigger.seen == trigger.count:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            write(path, payload)

        workdir.atomic_write_bytes = full
    elif point == "denied":
        def denied(prefix):
            raise tf.errors.PermissionDeniedError(None, None, f"{prefix}.index: Permission denied")

        workdir.sync_checkpoint = denied


def main() -> None:
    point, count, signal_name, *flags = sys.argv[1:]
    if point != "none":
        patch(point, Trigger(int(count), signal_name))
    sys.argv = [os.path.join(ROOT, "tools", "train.py"), *flags]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
