"""Draws a run's current clusters: PNG grids, TensorBoard images and an embedding-projector export.

    python tools/visualize_clusters.py --workdir=/tmp/kdc_demo
    tensorboard --logdir /tmp/kdc_demo/tensorboard   (Images and Projector tabs, run "clusters")

One grid per --select value (rows: clusters, columns: sampled members), and a table of what the first
and the latest clustering follow (NMI with the labels and with mean colour, brightness, edge energy and
its position; cluster sizes), also written to cluster_statistics.json beside the grids.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from keras_dc import cli
from keras_dc.config import COUNT, OPTIONAL_COUNT, SEED, ConfigError, Range, check_flag_numbers

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Declares the tool's flags; only __main__ calls this."""
    flags.DEFINE_string("workdir", "", "A training workdir (config.json, assignments/, backbone.keras).")
    flags.DEFINE_list("select", ["largest", "smallest", "random"],
                      "Which clusters, one grid each: largest, smallest and/or random.")
    flags.DEFINE_integer("clusters", 8, "Clusters (rows) per grid.")
    flags.DEFINE_integer("samples", 10, "Sampled images (columns) per cluster.")
    flags.DEFINE_integer("projector_samples", 500, "Images in the embedding-projector export (0: none).")
    flags.DEFINE_string("output_dir", "", "Folder of the PNG grids (default: WORKDIR/cluster_grids).")
    flags.DEFINE_integer("statistics_samples", 10000,
                         "Images on which the first and the latest clustering are compared with the labels and "
                         "with simple image statistics (mean colour, brightness, edge energy and its centre); "
                         "0: none.")
    flags.DEFINE_integer("seed", 0, "Seed of the random selection and the samples.")


# Every numeric flag and the values it accepts, checked in one place (config.check_numbers).
RANGES = {"clusters": COUNT, "samples": Range(1, 10**4), "projector_samples": OPTIONAL_COUNT,
          "statistics_samples": OPTIONAL_COUNT, "seed": SEED}


def check_flags() -> None:
    """Raises ConfigError naming the first wrong flag; the numbers are checked before TensorFlow loads."""
    if not FLAGS.workdir:
        raise ConfigError("workdir", "is required")
    check_flag_numbers(FLAGS, RANGES)
    from keras_dc.visualize import SELECTIONS

    if not FLAGS.select or any(value not in SELECTIONS for value in FLAGS.select):
        raise ConfigError("select", f"choose one or more of {', '.join(SELECTIONS)}, got {','.join(FLAGS.select)}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    try:
        check_flags()
        from keras_dc import visualize, workdir
        from keras_dc.config import errors_as_flags
        from keras_dc.sources import SourceError

        output_dir = FLAGS.output_dir or workdir.grids_dir(FLAGS.workdir)
        # The images come from the data the workdir recorded: a SourceError is the workdir's to fix.
        with errors_as_flags({workdir.WorkdirError: "workdir", SourceError: "workdir"}):
            summary = visualize.visualize_run(FLAGS.workdir, FLAGS.select, FLAGS.clusters, FLAGS.samples,
                                              FLAGS.projector_samples, output_dir, FLAGS.seed,
                                              FLAGS.statistics_samples)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # a damaged backbone.keras or assignments file
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3)
    print(f"clusters of cycle {summary['cycle']}")
    for how, entry in summary["grids"].items():
        rows = ", ".join(f"{cluster} ({size})" for cluster, size in zip(entry["clusters"], entry["sizes"]))
        print(f"  {how:8s} {entry['png']}  rows: cluster (size) {rows}")
    print(f"  TensorBoard images and projector ({summary.get('projector_images', 0)} images): {summary['tensorboard']}")
    if "statistics" in summary:
        print_statistics(summary["statistics"])


def print_statistics(statistics: dict) -> None:
    """The NMI table of the first and the latest clustering, one row each, and where the JSON went."""
    names = list(statistics["latest"]["nmi"])
    print(f"NMI of the clusters with labels and image statistics ({statistics['images']} images), cluster sizes (all):")
    print(f"  {'clustering':16s}" + "".join(f"{name:>13s}" for name in names) + "   sizes min / median / max")
    for which in ("first", "latest"):
        entry, sizes = statistics[which], statistics[which]["sizes"]
        print(f"  {which + ' (cycle ' + str(entry['cycle']) + ')':16s}"
              + "".join(f"{entry['nmi'][name]:13.3f}" for name in names)
              + f"   {sizes['min']} / {sizes['median']:g} / {sizes['max']}")
    print(f"  {statistics['json']}")


def entry_point() -> None:
    """The program, run as `python tools/visualize_clusters.py` or as the console script `keras-dc-visualize`."""
    define_flags()
    cli.run(main, __name__)


if __name__ == "__main__":
    entry_point()
