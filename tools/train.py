"""Trains a convnet with DeeperCluster (DeepCluster and RotNet are special cases).

    python tools/train.py --flagfile=flags/demo.flags --workdir=/tmp/kdc_demo

Rerunning the same command resumes from the workdir's last checkpoint: after a
kill, from the last completed epoch; after SIGTERM (pre-emption), from the batch
where it stopped. Exit status: 0 done, 1 diverged (non-finite loss or weights) or bad
flag syntax, 2 bad setting, 3 workdir or disk problem (a write failed, no intact
checkpoint), 143 pre-empted (checkpoint saved).
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags, logging

from keras_dc import cli
from keras_dc.config import (ARCHITECTURES, CACHE_DTYPES, PRECISIONS, SAMPLING_MODES, STRATEGIES, Config,
                             ConfigError, one_of)

FLAGS = flags.FLAGS
EXIT_DIVERGED = 1
EXIT_BAD_SETTING = 2
EXIT_STORAGE = 3  # the workdir or its disk: a write failed (full, not permitted) or nothing reads back whole
EXIT_PREEMPTED = 128 + 15  # as if killed by SIGTERM, so schedulers see a pre-empted job

HELP = {
    "workdir": "Folder of the run: config, checkpoints, assignments, TensorBoard logs, exported backbone.",
    "data": "Image source: digits, synthetic, a folder path, or tfds:NAME[:SPLIT] (with --tfds_data_dir).",
    "tfds_data_dir": "Folder where a TFDS data set was prepared (nothing is downloaded).",
    "arch": f"Backbone: {one_of(ARCHITECTURES)}.",
    "image_size": "Side of the square training images, in pixels.",
    "batch_size": "Global batch size (split over the replicas).",
    "epochs": "Number of training epochs.",
    "k": "Total number of clusters (k/m per super-cluster).",
    "super_clusters": "Number of super-clusters m; S = 4m super-classes with rotation, m without.",
    "rotation": "Predict the rotation (0/90/180/270) too; --norotation --super_clusters=1 is DeepCluster.",
    "reassign_every": "Re-cluster every T epochs.",
    "pca_dim": "Dimension after PCA whitening.",
    "pca_sample": "Fit the PCA on this many images (0: all).",
    "kmeans_iters": "Lloyd iterations of each k-means.",
    "sobel": "Fixed grey + Sobel filters in front of the network.",
    "lr": "SGD learning rate.",
    "momentum": "SGD momentum.",
    "weight_decay": "SGD weight decay: coupled L2 (g += wd * w before the momentum), as torch and the reference.",
    "decoupled_weight_decay": "Apply --weight_decay decoupled (w -= lr * wd * w outside the momentum) instead.",
    "sampling": f"{one_of(SAMPLING_MODES)}: the same number of images from each cluster per epoch, inverse "
                "cluster size loss weights, or neither.",
    "min_crop_scale": "Smallest area fraction of the random resized crop.",
    "flip": "Random horizontal flips in the training view (--noflip for data where mirroring changes meaning).",
    "seed": "Seed of everything random; the same seed gives the same run on the same CPU machine.",
    "strategy": f"{one_of(STRATEGIES)}.",
    "head_groups": "Split the replicas into G groups, each owning S/G sub-class heads (the reference's "
                   "distribution; one replica per process), or auto for the largest G dividing S and the replicas.",
    "precision": f"{one_of(PRECISIONS)}.",
    "jit_compile": "Compile the train step with XLA.",
    "deterministic": "Deterministic TensorFlow ops (reproducible, a little slower).",
    "synthetic_size": "Number of images of --data=synthetic.",
    "feature_cache_dir": "Folder of the disk caches of features during clustering (default: WORKDIR/feature_cache; "
                         "a node-local disk is best).",
    "feature_cache_dtype": f"{one_of(CACHE_DTYPES)} (float16 halves the feature caches on disk).",
    "max_cache_gb": "Refuse to start when one worker's feature caches would exceed this many GB (0: no limit).",
    "eval_every": "Every this many epochs, log k-NN and linear-probe top-1 on labelled data (0: never).",
    "eval_data": "Labelled validation set of --eval_every (syntax of --data; default: hold out 20% of --data).",
    "verbose": "Progress output: 0 silent, 1 progress bars, 2 one line per epoch and plain progress lines; "
               "-1: 1 on a terminal, 2 otherwise.",
    "progress_seconds": "With --verbose=2, seconds between two progress lines of a long stage (folder scan, "
                        "extraction, PCA, k-means); a shorter stage prints none.",
    "max_image_mb": "Image files larger than this many MB are skipped and reported, never read.",
    "max_image_pixels": "Images with more pixels than this (read from the file's header) are skipped and reported, "
                        "never decoded.",
    "reindex_data": "Resume on a folder whose files changed: index it again and re-cluster at once (else refused).",
    "pretrained": "Start the body from these weights instead of random ones (heads start fresh): a backbone.keras, "
                  "a workdir, or a reference PyTorch checkpoint (.pth, needs torch); same --arch, --image_size "
                  "and --sobel.",
}


def define_flags() -> None:
    """Declares one flag per Config field, with the field's default; only __main__ calls this."""
    defaults = Config()
    for field in dataclasses.fields(Config):
        value = getattr(defaults, field.name)
        define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
                  str: flags.DEFINE_string}[type(value)]
        define(field.name, value, HELP[field.name])


def dry_run(config: Config) -> None:
    """Prints the memory plan of the run (keras_dc.memory_plan) and exits before any data work."""
    import tempfile

    from keras_dc import backbones, config as config_lib, distribute, head_groups, memory_plan

    config_lib.validate(dataclasses.replace(config, workdir=config.workdir or tempfile.gettempdir()))
    replicas = FLAGS.dry_run_replicas or distribute.get_strategy(config.strategy).num_replicas_in_sync
    with config_lib.errors_as_flags({head_groups.GroupError: "head_groups"}):
        groups = head_groups.resolve(config.head_groups, config.super_classes, replicas)
    backbone = backbones.build_backbone(config.arch, config.image_size, sobel=config.sobel, seed=config.seed)
    print(memory_plan.describe(config, replicas, memory_plan.plan(config, replicas, backbone, groups), groups))


def config_from_flags() -> Config:
    return Config(**{field.name: FLAGS[field.name].value for field in dataclasses.fields(Config)})


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    import tensorflow as tf

    from keras_dc import train

    from keras_dc.preemption import Preempted
    from keras_dc.workdir import WRITE_ADVICE, Diverged, StorageError

    config = config_from_flags()
    if FLAGS.dry_run:
        try:
            dry_run(config)
        except ConfigError as error:
            stop(f"error: {error}", EXIT_BAD_SETTING)
        return
    try:
        strategy = train.check_settings(config)
        source = train.prepare_data(config)
        result = train.train(config, source, strategy=strategy)
    except ConfigError as error:
        stop(f"error: {error}", EXIT_BAD_SETTING)
    except Diverged as error:
        stop(f"error: {error} in {config.workdir}; rerun with a lower --lr to resume from it", EXIT_DIVERGED)
    except StorageError as error:
        stop(f"error: {error}", EXIT_STORAGE)
    except OSError as error:
        stop(f"error: {error}; {WRITE_ADVICE}", EXIT_STORAGE)
    except Preempted as error:
        stop(str(error), EXIT_PREEMPTED)
    except tf.errors.ResourceExhaustedError as error:
        stop(f"error: out of memory ({error.message.splitlines()[0][:200]}); lower --batch_size or --image_size "
             f"(--dry_run prints the memory plan)", EXIT_BAD_SETTING)
    print_summary(result)


def stop(message: str, status: int) -> None:
    """Ends the process with one line on stderr, no traceback."""
    print(message, file=sys.stderr)
    sys.exit(status)


def print_summary(result: dict) -> None:
    print("\nDone.")
    for key in ("tensorboard", "checkpoints", "backbone", "metrics"):
        print(f"  {key:12s} {result[key]}")
    first, final = result["first_stats"], result["final_stats"]
    if "cluster_nmi_labels" in final:
        print(f"  NMI of clusters vs labels: {first['cluster_nmi_labels']:.3f} at the first clustering "
              f"(random network), {final['cluster_nmi_labels']:.3f} at the last")
    print(f"  TensorBoard: tensorboard --logdir {result['tensorboard']}")


def entry_point() -> None:
    """The program, run as `python tools/train.py` or as the console script `keras-dc-train`."""
    define_flags()
    flags.DEFINE_bool("dry_run", False, "Print the memory plan of the run (per replica and per worker) and exit.")
    flags.DEFINE_integer("dry_run_replicas", 0, "With --dry_run: plan for this many replicas (0: this machine's).",
                         lower_bound=0)
    cli.run(main, __name__)


if __name__ == "__main__":
    entry_point()
