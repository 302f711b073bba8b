"""Writes a folder of generated shape images (disc, square, triangle, cross; one subfolder each).

    python tools/make_shapes.py --output=/tmp/shapes --images=2000

The folder stands for "a few thousand of my own images" (docs/evaluation.md, "Generated shapes": what
flags/small_photos.flags gives on it and why); the subfolder names serve only for evaluation.
"""

from __future__ import annotations

from absl import app, flags

from keras_dc import cli
from keras_dc.config import COUNT, SEED, Range, check_flag_numbers, result_or_exit

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("output", None, "Folder to write (created; SHAPE/NNNNN.png inside).", required=True)
    flags.DEFINE_integer("images", 2000, "Number of images, the four shapes in turn.")
    flags.DEFINE_integer("size", 64, "Side of the square images, in pixels.")
    flags.DEFINE_integer("seed", 0, "Seed of the drawing.")


# Every numeric flag and the values it accepts, checked in one place (config.check_numbers).
RANGES = {"images": COUNT, "size": Range(8, 8192), "seed": SEED}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    result_or_exit(lambda: check_flag_numbers(FLAGS, RANGES))
    from keras_dc import shapes

    paths = shapes.write_shapes_folder(FLAGS.output, FLAGS.images, FLAGS.size, FLAGS.seed)
    print(f"wrote {len(paths)} images of {', '.join(shapes.SHAPES)} under {FLAGS.output}")


def entry_point() -> None:
    """The program, run as `python tools/make_shapes.py` or as the console script `keras-dc-make-shapes`."""
    define_flags()
    cli.run(main, __name__)


if __name__ == "__main__":
    entry_point()
