"""Clustering seconds and peak RSS at scale: keras-dc's sharded hierarchical k-means in one process
and on N local workers, next to bare faiss.Kmeans doing the same two-level work on the same features.

    python tools/benchmark_clustering.py --sizes=10000,100000 --ks=1000 --output=/tmp/kdc_scaling.json

Synthetic L2-normalised features (--dim) are written once per size under --workdir
(4 x N x dim bytes). The figures of docs/scaling.md come from this tool; the full
grid (N = 10^6, k = 10000) takes tens of minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from keras_dc import cli
from keras_dc.config import COUNT, OPTIONAL_COUNT, Range, check_flag_numbers, result_or_exit

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The tool's flags; only __main__ calls this. --case/--cache/--k are set for child processes."""
    flags.DEFINE_list("sizes", ["10000", "100000", "1000000"], "Numbers of feature rows N.")
    flags.DEFINE_list("ks", ["1000", "10000"], "Numbers of clusters k.")
    flags.DEFINE_integer("m", 4, "Super-clusters m (k must be a multiple).")
    flags.DEFINE_integer("niter", 10, "Lloyd iterations at each level.")
    flags.DEFINE_integer("dim", 256, "Feature dimension d.")
    flags.DEFINE_integer("workers", 2, "Local workers of the multi-worker case (1: skip it).")
    flags.DEFINE_string("workdir", "/tmp/kdc_scaling", "Folder for the synthetic feature files.")
    flags.DEFINE_string("output", "", "Write every figure to this JSON file.")
    flags.DEFINE_enum("case", "", ["", "bare", "sharded"], "Internal: run one case in this process.")
    flags.DEFINE_string("cache", "", "Internal: the feature file of --case.")
    flags.DEFINE_integer("k", 0, "Internal: k of --case.")


# Every numeric flag and the values it accepts, checked in one place (config.check_numbers).
RANGES = {"sizes": COUNT, "ks": COUNT, "m": COUNT, "niter": Range(1, 10**5), "dim": Range(1, 2**16),
          "workers": Range(1, 1024), "k": OPTIONAL_COUNT}


def _usage(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run_case() -> None:
    """One measurement in this process (a child of the driver, or one of its workers)."""
    from keras_dc import distribute
    from keras_dc.bench import scaling_benchmark

    if FLAGS.case == "bare":
        scaling_benchmark.print_result(scaling_benchmark.bare_faiss_case(FLAGS.cache, FLAGS.k, FLAGS.m,
                                                                         FLAGS.niter, seed=0))
        return
    collective = distribute.Collective(distribute.get_strategy("auto"))
    scaling_benchmark.print_result(scaling_benchmark.sharded_case(FLAGS.cache, FLAGS.k, FLAGS.m, FLAGS.niter,
                                                                  seed=0, collective=collective))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    if FLAGS.case:
        run_case()
        return
    result_or_exit(lambda: check_flag_numbers(FLAGS, RANGES))
    sizes, ks = [int(float(size)) for size in FLAGS.sizes], [int(float(k)) for k in FLAGS.ks]
    for k in ks:
        if k % FLAGS.m:
            _usage(f"--ks: {k} is not a multiple of --m={FLAGS.m}")
    from keras_dc import workdir
    from keras_dc.bench import scaling_benchmark

    rows = []
    for size in sizes:
        path = os.path.join(FLAGS.workdir, f"features_{size}x{FLAGS.dim}.npy")
        if not os.path.exists(path):
            scaling_benchmark.write_synthetic_features(path, size, FLAGS.dim)
        for k in ks:
            if size < scaling_benchmark.MIN_POINTS_PER_CENTROID * k:
                print(f"N={size} k={k}: skipped, fewer than {scaling_benchmark.MIN_POINTS_PER_CENTROID} "
                      f"points per centroid")
                continue
            rows.append(scaling_benchmark.measure(os.path.abspath(__file__), path, size, k, FLAGS.m, FLAGS.niter,
                                                  FLAGS.workers))
    print(scaling_benchmark.markdown_table(rows))
    if FLAGS.output:
        workdir.write_json(FLAGS.output, rows)


def entry_point() -> None:
    """The program, run as `python tools/benchmark_clustering.py` or as `keras-dc-benchmark-clustering`."""
    define_flags()
    cli.run(main, __name__)


if __name__ == "__main__":
    entry_point()
