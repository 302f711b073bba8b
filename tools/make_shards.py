"""Writes an image folder as TFRecord shards of its files' encoded bytes, for --data=shards:DIR.

    python tools/make_shards.py --data=/data/images --output=/data/images_shards

Files are listed, not decoded, and copied byte for byte (never re-encoded), --workers shards at a
time, with progress. Run again with the same flags, a killed conversion writes only the shards
still missing. Image n of the shards is image n of the folder, so a run on either gives the same
clustering (README, "Millions of images").
"""

from __future__ import annotations

from absl import app, flags

from keras_dc import cli
from keras_dc.config import MAX_IMAGE_MB

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("data", None, "Image folder to convert (first-level subfolders name the classes).",
                        required=True)
    flags.DEFINE_string("output", None, "Folder to write the shards to (created).", required=True)
    flags.DEFINE_integer("images_per_shard", 1024, "Images per shard (about 100 MB of typical JPEGs).", lower_bound=1)
    flags.DEFINE_integer("workers", 8, "Shards written at once.", lower_bound=1)
    flags.DEFINE_float("max_image_mb", MAX_IMAGE_MB, "Larger files are left out, as training does.")
    flags.DEFINE_integer("verbose", -1, "Progress: 0 none, 1 a line redrawn in place, 2 timestamped lines, "
                         "-1 1 on a terminal and 2 otherwise.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from keras_dc import progress, shards
    from keras_dc.config import errors_as_flags, result_or_exit
    from keras_dc.sources import SourceError

    def convert() -> dict:
        with errors_as_flags({SourceError: "data"}), progress.reporting(FLAGS.verbose):
            return shards.write_shards(FLAGS.data, FLAGS.output, FLAGS.images_per_shard, FLAGS.workers,
                                       FLAGS.max_image_mb)

    manifest = result_or_exit(convert)
    print(f"{FLAGS.output}: {manifest['num_images']} images in {len(manifest['shards'])} shards; "
          f"train with --data=shards:{FLAGS.output}")


def entry_point() -> None:
    """The program, run as `python tools/make_shards.py` or as the console script `keras-dc-make-shards`."""
    define_flags()
    cli.run(main, __name__)


if __name__ == "__main__":
    entry_point()
