"""Fine-tunes a backbone on labelled images: a linear classifier on the frozen body, or the whole network.

    python tools/finetune.py --workdir=/tmp/kdc_demo --freeze=all --output=/tmp/kdc_demo/finetune.json
    python tools/finetune.py --random_init --arch=small --image_size=32 --train_data=digits --freeze=none

The backbone comes from a trained --workdir, an exported --backbone (.keras, e.g. an imported reference
model) or --random_init (the baseline, same flags). Without --val_data a stratified --val_fraction of
--train_data is held out. --freeze: all, none, or the last backbone layer that keeps its weights.
The JSON report ({"top1", "top5", "epochs", "config", ...}) goes to --output, curves to TensorBoard.
"""

from __future__ import annotations

import dataclasses
import os

from absl import app, flags, logging

from keras_dc import cli, tool_inputs
from keras_dc.config import (DECAY, FRACTION, LEARNING_RATE, MOMENTUM, SEED, STRATEGIES, ConfigError, Range,
                             check_flag_numbers, one_of, result_or_exit)

FLAGS = flags.FLAGS
SINGLE_WORKER_STRATEGIES = tuple(strategy for strategy in STRATEGIES if strategy != "multi_worker")


def define_flags() -> None:
    """Declares the tool's flags; only __main__ calls this."""
    tool_inputs.define_flags(flags, "fine-tunes")
    flags.DEFINE_string("freeze", "none", "all: train only the classifier on the frozen body; none: train "
                        "everything; a layer name: that layer and those before it keep their weights.")
    flags.DEFINE_integer("epochs", 30, "Training epochs.")
    flags.DEFINE_float("lr", 0.01, "Initial SGD learning rate (cosine decay to 0).")
    flags.DEFINE_integer("batch_size", 32, "Global batch size.")
    flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
    flags.DEFINE_float("weight_decay", 1e-4, "Coupled (torch) weight decay.")
    flags.DEFINE_float("min_crop_scale", 0.08, "Smallest random-resized-crop area of the training views.")
    flags.DEFINE_bool("flip", True, "Horizontal flips of the training views.")
    flags.DEFINE_integer("seed", 0, "Seed of the split, the classifier, the batches and --random_init.")
    flags.DEFINE_string("strategy", "auto", f"{one_of(SINGLE_WORKER_STRATEGIES)} (as tools/train.py).")
    flags.DEFINE_string("output", "", "Where to write the JSON report (default: none).")
    flags.DEFINE_string("tensorboard_dir", "", "TensorBoard folder (default: WORKDIR/tensorboard/finetune with "
                        "--workdir, else none).")


# Every numeric flag and the values it accepts, checked in one place (config.check_numbers).
RANGES = {**tool_inputs.RANGES, "epochs": Range(1, 10**6), "lr": LEARNING_RATE, "batch_size": Range(1, 2**20),
          "momentum": MOMENTUM, "weight_decay": DECAY, "min_crop_scale": FRACTION, "seed": SEED}


def settings_from_flags():
    """The fine-tuning settings the flags describe; raises ConfigError naming a wrong flag (before TF loads)."""
    tool_inputs.check_inputs(FLAGS.workdir, FLAGS.backbone, FLAGS.random_init, FLAGS.val_fraction)
    check_flag_numbers(FLAGS, RANGES)
    if FLAGS.strategy not in SINGLE_WORKER_STRATEGIES:
        raise ConfigError("strategy", f"unknown value {FLAGS.strategy!r}; choose {one_of(SINGLE_WORKER_STRATEGIES)}")
    from keras_dc.finetune import FinetuneSettings

    return FinetuneSettings(epochs=FLAGS.epochs, lr=FLAGS.lr, batch_size=FLAGS.batch_size, momentum=FLAGS.momentum,
                            weight_decay=FLAGS.weight_decay, freeze=FLAGS.freeze,
                            min_crop_scale=FLAGS.min_crop_scale, flip=FLAGS.flip, seed=FLAGS.seed)


def data_split(image_size: int, trained):
    """The training and validation images the flags name (a stratified hold-out without --val_data)."""
    import numpy as np

    from keras_dc import finetune, probe

    train, val = tool_inputs.load_train_val(FLAGS.train_data, FLAGS.val_data, image_size, trained,
                                            FLAGS.tfds_data_dir, FLAGS.synthetic_size, FLAGS.seed, FLAGS.workdir)
    if val is not None:
        return finetune.Split(train, np.arange(train.num_images), val, np.arange(val.num_images))
    train_rows, val_rows = probe.holdout(train.labels, FLAGS.val_fraction, FLAGS.seed)
    return finetune.Split(train, train_rows, train, val_rows)


def run() -> dict:
    """Loads the backbone and data the flags name, fine-tunes, and adds the settings to the report."""
    settings = settings_from_flags()
    from keras_dc import distribute, finetune, progress, workdir
    from keras_dc.config import errors_as_flags

    trained = tool_inputs.trained_config(FLAGS.workdir)
    strategy = distribute.get_strategy(FLAGS.strategy)
    with strategy.scope():
        backbone, description = tool_inputs.load_backbone(FLAGS.workdir, FLAGS.backbone, FLAGS.random_init,
                                                          FLAGS.arch, FLAGS.image_size, FLAGS.sobel, FLAGS.seed)
    image_size = backbone.input_shape[1]
    split = data_split(image_size, trained)
    log_dir = FLAGS.tensorboard_dir or (workdir.tensorboard_dir(FLAGS.workdir, "finetune") if FLAGS.workdir else "")
    with errors_as_flags({finetune.FreezeError: "freeze", finetune.BatchSizeError: "batch_size"}), \
            progress.reporting(progress.AUTO, FLAGS.progress_seconds):
        print(f"note: {finetune.training_top1_note(backbone, settings)}")
        report = finetune.finetune(backbone, split, settings, strategy, log_dir, verbose=2)
    report["config"] = {"backbone": description, "train_data": split.train.description,
                        "val_data": FLAGS.val_data and split.val.description or f"held out {FLAGS.val_fraction}",
                        "image_size": image_size, "replicas": strategy.num_replicas_in_sync,
                        "log_dir": log_dir, "settings": dataclasses.asdict(settings)}
    if FLAGS.output:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
        workdir.write_json(FLAGS.output, report)
    return report


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    report = result_or_exit(run)
    print(f"fine-tuned {report['epochs']} epochs, freeze={FLAGS.freeze} ({len(report['frozen_layers'])} layers "
          f"frozen): validation top-1 {100 * report['top1']:.2f}%, top-5 {100 * report['top5']:.2f}% "
          f"on {report['images']['val']} images")
    if FLAGS.output:
        print(f"report: {FLAGS.output}")


def entry_point() -> None:
    """The program, run as `python tools/finetune.py` or as the console script `keras-dc-finetune`."""
    define_flags()
    cli.run(main, __name__)


if __name__ == "__main__":
    entry_point()
