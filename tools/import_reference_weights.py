"""Converts a released DeeperCluster / DeepCluster / RotNet VGG-16-BN checkpoint (PyTorch) into a backbone.

    python tools/import_reference_weights.py --checkpoint=ours.pth --output_dir=/models/deepercluster

writes OUTPUT_DIR/backbone.keras and backbone.json, which tools/linear_probe.py, tools/finetune.py and
tools/train.py's clustering use like a trained workdir's export (--backbone=OUTPUT_DIR/backbone.keras).
The model includes the reference's input normalisation, padding and (when the checkpoint has them, or
with --sobel) its grey + Sobel layers. Needs torch (CPU is enough); the released models are CC BY-NC 4.0.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from keras_dc import cli
from keras_dc.config import ConfigError, result_or_exit

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Declares the tool's flags; only __main__ calls this."""
    flags.DEFINE_string("checkpoint", "", "The reference's checkpoint (.pth), e.g. ours.pth.")
    flags.DEFINE_string("output_dir", "", "Folder for backbone.keras and backbone.json.")
    flags.DEFINE_bool("sobel", False, "Add the fixed grey + Sobel input layers although the checkpoint does "
                      "not store them (they are used whenever it does).")


def run() -> str:
    """Reads, converts and exports; returns the path of backbone.keras. Raises ConfigError naming a flag."""
    if not os.path.isfile(FLAGS.checkpoint):
        raise ConfigError("checkpoint", f"{FLAGS.checkpoint or 'a path'} is required and must be a file")
    if not FLAGS.output_dir:
        raise ConfigError("output_dir", "is required")
    try:
        import torch  # noqa: F401  (only to say clearly that it is missing)
    except ImportError:
        raise ConfigError("checkpoint", "reading a PyTorch checkpoint needs torch: pip install torch") from None
    from keras_dc import reference_weights, workdir
    from keras_dc.config import errors_as_flags

    with errors_as_flags({reference_weights.ReferenceWeightsError: "checkpoint"}):
        state = reference_weights.read_checkpoint(FLAGS.checkpoint)
        sobel = reference_weights.has_sobel(state) or FLAGS.sobel
        model = reference_weights.convert(state, sobel)
    try:
        os.makedirs(FLAGS.output_dir, exist_ok=True)
    except OSError as error:
        raise ConfigError("output_dir", f"cannot create {FLAGS.output_dir}: {error.strerror}") from None
    return workdir.save_backbone(FLAGS.output_dir, model,
                                 reference_weights.description(os.path.abspath(FLAGS.checkpoint), model, sobel))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    path = result_or_exit(run)
    print(f"backbone: {path}")


def entry_point() -> None:
    """The program, run as `python tools/import_reference_weights.py` or as the console script
    `keras-dc-import-reference-weights`."""
    define_flags()
    cli.run(main, __name__)


if __name__ == "__main__":
    entry_point()
