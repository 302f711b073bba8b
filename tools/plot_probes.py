"""Draws top-1 per layer of several linear-probe reports in one PNG (and in TensorBoard).

    python tools/plot_probes.py --probes=/tmp/kdc_demo/probe.json,/tmp/random.json \
        --labels="DeeperCluster (demo),random init" --output=docs/demo_probes.png

Each --probes file is the --output JSON of tools/linear_probe.py, e.g. of a trained run, of the
--random_init baseline and of an imported reference model.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

from keras_dc import cli
from keras_dc.config import ConfigError, result_or_exit

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Declares the tool's flags; only __main__ calls this."""
    flags.DEFINE_list("probes", [], "linear_probe.py JSON reports, one line each.")
    flags.DEFINE_list("labels", [], "A legend label per report (default: the file names).")
    flags.DEFINE_string("output", "probes.png", "The PNG to write; the plotted top-1s go beside it (.json).")
    flags.DEFINE_string("title", "Linear probe on each layer", "Title of the figure.")
    flags.DEFINE_string("tensorboard_dir", "", "Also write the picture to TensorBoard here (default: no).")


def run() -> str:
    """Reads the reports, draws and writes; returns the PNG's path. Raises ConfigError naming a flag."""
    if not FLAGS.probes:
        raise ConfigError("probes", "give one or more linear_probe.py reports")
    if FLAGS.labels and len(FLAGS.labels) != len(FLAGS.probes):
        raise ConfigError("labels", f"{len(FLAGS.labels)} labels for {len(FLAGS.probes)} reports")
    from keras_dc import probe_plot
    from keras_dc.config import errors_as_flags

    labels = FLAGS.labels or [probe_plot.default_label(path) for path in FLAGS.probes]
    with errors_as_flags({probe_plot.ProbeReportError: "probes"}):
        curves = {label: probe_plot.read_top1(path) for label, path in zip(labels, FLAGS.probes)}
    png = probe_plot.draw(curves, FLAGS.title)
    numbers = {"title": FLAGS.title, "top1": curves, "reports": dict(zip(labels, FLAGS.probes))}
    from keras_dc import workdir  # TensorFlow's import: only once the reports were read

    try:
        workdir.atomic_write_bytes(FLAGS.output, png)
        numbers_path = os.path.splitext(FLAGS.output)[0] + ".json"  # the plotted numbers, beside it
        workdir.atomic_write_bytes(numbers_path, json.dumps(numbers, indent=2).encode())
    except OSError as error:
        raise ConfigError("output", f"cannot write {FLAGS.output}: {error.strerror}") from None
    if FLAGS.tensorboard_dir:
        probe_plot.log_to_tensorboard(png, FLAGS.tensorboard_dir)
    return FLAGS.output


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    path = result_or_exit(run)
    print(f"plot: {path}")


def entry_point() -> None:
    """The program, run as `python tools/plot_probes.py` or as the console script `keras-dc-plot-probes`."""
    define_flags()
    cli.run(main, __name__)


if __name__ == "__main__":
    entry_point()
