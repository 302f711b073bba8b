"""Starts N workers of a multi-worker run as local processes on loopback (MultiWorkerMirroredStrategy).

    python tools/launch_local.py --workers=2 -- --flagfile=flags/demo.flags --workdir=/tmp/kdc_mw

Arguments after `--` go to the program (tools/train.py unless --program). Each
worker gets its TF_CONFIG and a share of the CPU threads; its output lines are
prefixed with [worker i]. The exit status is 0 when every worker succeeds, else
the first failure's (128 + N for a worker killed by signal N; the other workers
are then stopped), or 2 for a bad launcher flag. SIGTERM, SIGINT (Ctrl-C) or SIGHUP
to the launcher is passed on to the workers as SIGTERM: they save at the same
batch and stop; the launcher waits for them and exits 128 + the signal's number
(143, 130, 129). The workers' TF_CONFIG names 127.0.0.1 only; for real nodes, and
who may connect to the workers' ports, see docs/scaling.md.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from keras_dc import cli
from keras_dc.config import Range, check_flag_numbers, result_or_exit

TOOLS = os.path.dirname(os.path.abspath(__file__))

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The launcher's flags; only __main__ calls this."""
    flags.DEFINE_integer("workers", 2, "Number of local worker processes.")
    flags.DEFINE_string("program", os.path.join(TOOLS, "train.py"), "Python script each worker runs.")
    flags.DEFINE_integer("threads_per_worker", 0, "OpenMP (faiss) threads per worker; 0: CPU cores / workers.")
    flags.DEFINE_integer("gpus_per_worker", 0, "GPUs of each worker (CUDA_VISIBLE_DEVICES): 1 runs one process per "
                         "GPU, as --head_groups needs; 0 leaves every GPU visible to every worker.")


# Every numeric flag and the values it accepts, checked in one place (config.check_numbers).
RANGES = {"workers": Range(1, 1024), "threads_per_worker": Range(0, 4096), "gpus_per_worker": Range(0, 1024)}


def main(argv: list[str]) -> None:
    from keras_dc.bench import local_cluster

    result_or_exit(lambda: check_flag_numbers(FLAGS, RANGES))
    if not os.path.isfile(FLAGS.program):
        _usage(f"--program: no such file {FLAGS.program!r}")
    command = local_cluster.python_command(FLAGS.program, argv[1:])
    sys.exit(local_cluster.run_local_cluster(command, FLAGS.workers, FLAGS.threads_per_worker,
                                             gpus_per_worker=FLAGS.gpus_per_worker))


def _usage(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def entry_point() -> None:
    """The program, run as `python tools/launch_local.py` or as the console script `keras-dc-launch-local`."""
    define_flags()
    cli.run(main, __name__)


if __name__ == "__main__":
    entry_point()
