"""Draws top-1 per layer of several linear-probe reports in one PNG (and in TensorBoard), and prints
their layers, k-NN and k-means NMI as a Markdown table.

    python tools/plot_probes.py --probes=/tmp/kdc_demo/probe.json,/tmp/random.json \
        --labels="DeeperCluster (demo),random init" --output=docs/demo_probes.png
    python tools/plot_probes.py --probes="/tmp/dc_s*.json,/tmp/random_s*.json" --labels=trained,random

Each --probes entry is the --output JSON of tools/linear_probe.py (e.g. of a trained run, of the
--random_init baseline, of an imported reference model), or a glob of several: the same network
probed on several held-out splits (--seed), drawn and tabled as mean ± standard deviation.
"""

from __future__ import annotations

import glob
import json
import os

from absl import app, flags, logging

from keras_dc import cli
from keras_dc.config import ConfigError, result_or_exit

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Declares the tool's flags; only __main__ calls this."""
    flags.DEFINE_list("probes", [], "linear_probe.py JSON reports, or globs of them (one network's seeds), "
                      "one line each.")
    flags.DEFINE_list("labels", [], "A legend label per report (default: the file names).")
    flags.DEFINE_string("output", "probes.png", "The PNG to write; the plotted top-1s go beside it (.json).")
    flags.DEFINE_string("title", "Linear probe on each layer", "Title of the figure.")
    flags.DEFINE_string("tensorboard_dir", "", "Also write the picture to TensorBoard here (default: no).")


def run() -> tuple[str, str]:
    """Reads the reports, draws and writes; returns the PNG's path and the table. Raises ConfigError
    naming a flag."""
    if not FLAGS.probes:
        raise ConfigError("probes", "give one or more linear_probe.py reports")
    if FLAGS.labels and len(FLAGS.labels) != len(FLAGS.probes):
        raise ConfigError("labels", f"{len(FLAGS.labels)} labels for {len(FLAGS.probes)} reports")
    from keras_dc import probe_plot
    from keras_dc.config import errors_as_flags

    labels = FLAGS.labels or [probe_plot.default_label(path) for path in FLAGS.probes]
    reports = dict(zip(labels, map(_matching_files, FLAGS.probes)))
    with errors_as_flags({probe_plot.ProbeReportError: "probes"}):
        summaries = {label: probe_plot.summarize(paths) for label, paths in reports.items()}
    curves, spread = probe_plot.layer_curves(summaries)
    png = probe_plot.draw(curves, FLAGS.title, spread)
    table = probe_plot.markdown_table(summaries, {label: len(paths) for label, paths in reports.items()})
    numbers = {"title": FLAGS.title, "top1": curves, "top1_sd": spread, "scores": summaries, "reports": reports}
    from keras_dc import workdir  # TensorFlow's import: only once the reports were read

    try:
        workdir.atomic_write_bytes(FLAGS.output, png)
        numbers_path = os.path.splitext(FLAGS.output)[0] + ".json"  # the plotted numbers, beside it
        workdir.atomic_write_bytes(numbers_path, json.dumps(numbers, indent=2).encode())
    except OSError as error:
        raise ConfigError("output", f"cannot write {FLAGS.output}: {error.strerror}") from None
    if FLAGS.tensorboard_dir:
        probe_plot.log_to_tensorboard(png, FLAGS.tensorboard_dir)
    return FLAGS.output, table


def _matching_files(entry: str) -> list[str]:
    """The reports an entry of --probes names: itself, or the files its glob matches, sorted."""
    if not glob.has_magic(entry):
        return [entry]
    paths = sorted(glob.glob(entry))
    if not paths:
        raise ConfigError("probes", f"{entry} matches no file")
    return paths


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    path, table = result_or_exit(run)
    print(table)
    print(f"plot: {path}")


def entry_point() -> None:
    """The program, run as `python tools/plot_probes.py` or as the console script `keras-dc-plot-probes`."""
    define_flags()
    cli.run(main, __name__)


if __name__ == "__main__":
    entry_point()
