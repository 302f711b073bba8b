"""What a large image folder costs before training: listing and indexing it, fresh and on resume,
and a resumed run's time to its first step (docs/scaling.md, "Millions of images").

    python -m keras_dc.bench.data_index write DIR N         N tiny 32x32 PNGs, 1,000 per subfolder
    python -m keras_dc.bench.data_index index DATA [WORKDIR] load DATA (a folder or shards:DIR) as a
                                                            fresh run does, then a folder as a resumed
                                                            run does (its index saved in WORKDIR)
    python -m keras_dc.bench.data_index read DATA N         clustering views of images [0, N) of DATA,
                                                            twice
    python -m keras_dc.bench.data_index decode N            N tiny PNGs decoded, plain and guarded
    python -m keras_dc.bench.data_index first_step FLAGS... tools/train.py FLAGS, stopped (SIGKILL) at
                                                            its first training step

`index` prints JSON: seconds and peak RSS above the RSS after importing TensorFlow; `read` and
`decode` images/s; `first_step` the seconds from the process's start to the end of its first step.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import sys
import time

import numpy as np

FILES_PER_FOLDER = 1000
VARIANTS = 64  # distinct images, so that a run on the folder has something to cluster


def write_folder(root: str, count: int) -> None:
    """`count` 32x32 PNGs (VARIANTS distinct ones in turn) in subfolders of FILES_PER_FOLDER."""
    from PIL import Image

    payloads = []
    for variant in range(VARIANTS):
        buffer = io.BytesIO()
        pixels = np.random.default_rng(variant).integers(0, 256, (4, 4, 3), np.uint8).repeat(8, 0).repeat(8, 1)
        Image.fromarray(pixels).save(buffer, "PNG")
        payloads.append(buffer.getvalue())
    for start in range(0, count, FILES_PER_FOLDER):
        folder = os.path.join(root, f"{start // FILES_PER_FOLDER:05d}")
        os.makedirs(folder, exist_ok=True)
        for number in range(start, min(start + FILES_PER_FOLDER, count)):
            with open(os.path.join(folder, f"{number:08d}.png"), "wb") as handle:
                handle.write(payloads[number % VARIANTS])


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def index_figures(spec: str, workdir: str = "") -> dict[str, float]:
    """Seconds and peak RSS above TensorFlow's of loading `spec` fresh, then by the index saved in `workdir`."""
    import tensorflow as tf  # noqa: F401

    from keras_dc import sources, workdir as workdir_lib

    baseline = peak_rss_gb()
    start = time.perf_counter()
    source = sources.load_source(spec, 16)
    figures = {"images": source.num_images, "fresh_seconds": time.perf_counter() - start,
               "fresh_peak_rss_gb_above_tf": peak_rss_gb() - baseline}
    if source.index is not None:
        figures["index_bytes"] = sum(int(array.nbytes) for array in (
            source.index.names_utf8, source.index.starts, source.index.file_bytes, source.index.failed))
    if workdir:
        workdir_lib.save_data_index(workdir, source.index)
        del source
        start = time.perf_counter()
        resumed = sources.folder_source(spec, index=workdir_lib.data_index(workdir))
        figures.update(resume_seconds=time.perf_counter() - start, resume_images=resumed.num_images,
                       peak_rss_gb_above_tf=peak_rss_gb() - baseline)
    return figures


def read_rate(spec: str, count: int) -> dict[str, float]:
    """Images/s of the clustering view (read, decode, resize) of images [0, count) of `spec`."""
    from keras_dc import data, sources

    source = sources.load_source(spec, 16)
    dataset = data.clustering_dataset(source, 16, 256, np.arange(count))
    rates = {}
    for name in ("first_pass", "second_pass"):  # the second decodes without the guard
        start = time.perf_counter()
        for _ in dataset:
            pass
        rates[f"{name}_images_per_second"] = count / (time.perf_counter() - start)
    return {**rates, "failed": len(source.failed)}


def decode_rates(count: int) -> dict[str, float]:
    """Images/s of decoding `count` copies of one tiny PNG in a parallel map, with and without the guard
    that turns a decode error into a skipped example."""
    import tensorflow as tf
    from PIL import Image

    from keras_dc import sources

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buffer, "PNG")
    payloads = tf.data.Dataset.from_tensors(buffer.getvalue()).repeat(count)
    rates = {}
    for name, decode in (("plain", sources.decode_bytes), ("guarded", lambda p: sources.guarded_decode(p)[0])):
        start = time.perf_counter()
        for _ in payloads.map(decode, num_parallel_calls=tf.data.AUTOTUNE):
            pass
        rates[f"{name}_images_per_second"] = count / (time.perf_counter() - start)
    return rates


def seconds_since_start() -> float:
    """Seconds since this process started (from /proc: its start in clock ticks after boot)."""
    ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
    uptime = float(open("/proc/uptime").read().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


def first_step(flags: list[str]) -> None:
    """Runs tools/train.py with `flags`; at the end of its first step prints the time since the
    process started, and kills the process (SIGKILL: nothing saved, the workdir as it was)."""
    import runpy

    import keras

    from keras_dc import train

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            print(json.dumps({"first_step_seconds_since_start": seconds_since_start()}), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    run_callbacks = train.run_callbacks
    train.run_callbacks = lambda *args: run_callbacks(*args) + [Stop()]
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools",
                        "train.py")
    sys.argv = [tool, *flags]
    runpy.run_path(tool, run_name="__main__")


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "write":
        write_folder(args[0], int(args[1]))
    elif command == "index":
        print(json.dumps(index_figures(*args), indent=1))
    elif command == "read":
        print(json.dumps(read_rate(args[0], int(args[1]))))
    elif command == "decode":
        print(json.dumps(decode_rates(int(args[0]))))
    elif command == "first_step":
        first_step(args)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
