"""TFRecord shards of an image folder, for collections too large to list and open file by file.

A shards folder (tools/make_shards.py writes it; --data=shards:DIR reads it) holds:
    shards.json                      the folder it was made from, image count, class names, shard files,
                                     and whether it is complete
    names.npy, file_bytes.npy        the folder's DataIndex (paths as one UTF-8 blob, sizes), in index order
    labels.npy                       int32 class of each image (-1 without class subfolders)
    offsets.npy                      int64 byte offset of each image's record in its shard
    shard-NNNNN-of-MMMMM.tfrecord    tf.train.Example records of images [N * per_shard, (N + 1) * per_shard):
                                     image/encoded (the file's bytes, never re-encoded), image/index,
                                     image/class/label, image/filename
Image n keeps index n, as in the folder. Training reads each record where offsets.npy says
(TensorFlow's CRC-checked random reader), in the order of the epoch's plan, so a run on the
shards is the run on the folder; a damaged record or an image that does not decode is skipped
and counted as a bad file is. The arrays are memory-mapped: a worker's memory holds the pages
of the images it reads, not 10^8 paths.

A conversion writes each shard to a temporary name and renames it once its offsets are saved,
so a killed conversion, run again with the same flags, writes only the shards still missing.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import os

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.python.lib.io import tf_record

from keras_dc import progress, workdir
from keras_dc.sources import DataIndex, ImageSource, SourceError, folder_source, read_regular_file

MANIFEST = "shards.json"
FORMAT = "keras-dc shards 1"
RECORD_OVERHEAD = 16  # a TFRecord's length (8 bytes), its CRC (4), then the data and its CRC (4)


@dataclasses.dataclass(frozen=True)
class ShardReader:
    """Reads image n's encoded bytes from its record in the shards of `folder`."""

    folder: str
    files: tuple[str, ...]
    per_shard: int
    offsets: np.ndarray  # (N,) int64, memory-mapped

    def read(self, position: int) -> bytes:
        """The image's bytes, or b"" when its record is damaged, cut short or holds another image."""
        try:
            record, _ = tf_record.tf_record_random_reader(self._path(position)).read(int(self.offsets[position]))
            feature = tf.train.Example.FromString(record).features.feature
            if list(feature["image/index"].int64_list.value) != [position]:
                return b""
            return feature["image/encoded"].bytes_list.value[0]
        except (tf.errors.OpError, OSError, IndexError, DecodeError):
            return b""

    def describe(self, position: int) -> str:
        return f"{self._path(position)} (record of image {position})"

    def _path(self, position: int) -> str:
        return os.path.join(self.folder, self.files[position // self.per_shard])


def shard_source(folder: str) -> ImageSource:
    """The images of a complete shards folder, labelled when the folder they came from had classes."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise SourceError(f"{folder!r} holds no {MANIFEST}: write shards with "
                          f"tools/make_shards.py --data=FOLDER --output={folder}")
    if not manifest["complete"]:
        raise SourceError(f"the shards in {folder} are not complete: run tools/make_shards.py "
                          f"--data={manifest['source']} --output={folder} again to finish them")
    offsets = np.load(os.path.join(folder, "offsets.npy"), mmap_mode="r")
    reader = ShardReader(folder, tuple(manifest["shards"]), manifest["images_per_shard"], offsets)
    labels = class_names = None
    if manifest["class_names"] is not None:
        labels, class_names = np.load(os.path.join(folder, "labels.npy"), mmap_mode="r"), tuple(manifest["class_names"])
    return ImageSource(f"shards {folder} ({manifest['num_images']} images)", manifest["num_images"], reader=reader,
                       labels=labels, class_names=class_names)


def read_manifest(folder: str) -> dict | None:
    """The shards folder's manifest, or None when it has none; a damaged one is a SourceError."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as error:
        raise SourceError(f"cannot read {path} ({error})") from None
    if manifest.get("format") != FORMAT:
        raise SourceError(f"{path} is not a manifest of {FORMAT}")
    return manifest


def write_shards(source_folder: str, output: str, images_per_shard: int, workers: int,
                 max_image_mb: float, log=print) -> dict:
    """Converts an image folder into shards in `output` (see the module's docstring), `workers` shards
    at a time, with progress; continues a conversion killed before. Returns the manifest."""
    manifest = read_manifest(output)
    if manifest is None:
        manifest = _plan(source_folder, output, images_per_shard, max_image_mb)
    elif (manifest["source"], manifest["images_per_shard"]) != (source_folder, images_per_shard):
        raise SourceError(f"{output} holds shards of {manifest['source']} with --images_per_shard="
                          f"{manifest['images_per_shard']}: use another --output or those flags")
    if manifest["complete"]:
        log(f"{output} already holds the {manifest['num_images']} images of {source_folder}")
        return manifest
    index = DataIndex.from_blob(np.load(os.path.join(output, "names.npy")),
                                np.load(os.path.join(output, "file_bytes.npy")))
    labels = np.load(os.path.join(output, "labels.npy"))
    pending = [shard for shard, name in enumerate(manifest["shards"])
               if not os.path.exists(_offsets_path(output, name))]
    log(f"writing {len(pending)} of {len(manifest['shards'])} shards of {source_folder} to {output}")
    stage = progress.Stage("shards: writing", len(index), "image")
    done = len(index) - sum(len(_shard_range(shard, images_per_shard, len(index))) for shard in pending)
    write = lambda shard: _write_shard(source_folder, output, manifest["shards"][shard],  # noqa: E731
                                       _shard_range(shard, images_per_shard, len(index)), index, labels)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for written in pool.map(write, pending):
            done += written
            stage.update(done)
    return _finish(output, manifest)


def _plan(source_folder: str, output: str, images_per_shard: int, max_image_mb: float) -> dict:
    """Lists the folder (no file is read) and saves its index, labels and shard names: what every
    later run of the same conversion works from, whatever the folder holds by then."""
    source = folder_source(source_folder, max_image_mb)
    os.makedirs(output, exist_ok=True)
    count = -(-source.num_images // images_per_shard)
    labels = source.labels if source.labels is not None else np.full(source.num_images, -1, np.int32)
    for name, array in (("names", source.index.names_utf8), ("file_bytes", source.index.file_bytes),
                        ("labels", labels.astype(np.int32))):
        _save_array(os.path.join(output, f"{name}.npy"), array)
    manifest = {"format": FORMAT, "source": source_folder, "num_images": source.num_images,
                "images_per_shard": images_per_shard, "class_names": source.class_names and list(source.class_names),
                "shards": [f"shard-{shard:05d}-of-{count:05d}.tfrecord" for shard in range(count)],
                "left_out": list(source.unreadable), "complete": False}
    _save_manifest(output, manifest)
    return manifest


def _shard_range(shard: int, images_per_shard: int, num_images: int) -> range:
    return range(shard * images_per_shard, min((shard + 1) * images_per_shard, num_images))


def _write_shard(source_folder: str, output: str, name: str, positions: range, index: DataIndex,
                 labels: np.ndarray) -> int:
    """Writes one shard's records (a file that cannot be read now gets an empty image, so that every
    index keeps its record; training skips it), then its offsets; returns its image count."""
    path = os.path.join(output, name)
    offsets = np.zeros(len(positions), np.int64)
    offset = 0
    with tf.io.TFRecordWriter(path + ".tmp") as writer:  # a kill leaves the .tmp, written again next time
        for slot, position in enumerate(positions):
            filename = index.name(position)
            encoded = read_regular_file(os.path.join(source_folder, filename), int(index.file_bytes[position]))
            payload = _example(encoded, position, int(labels[position]), filename)
            writer.write(payload)
            offsets[slot] = offset
            offset += len(payload) + RECORD_OVERHEAD
    os.replace(path + ".tmp", path)
    _save_array(_offsets_path(output, name), offsets)
    return len(positions)


def _example(encoded: bytes, position: int, label: int, filename: str) -> bytes:
    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
               "image/index": tf.train.Feature(int64_list=tf.train.Int64List(value=[position])),
               "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
               "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[filename.encode()]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _finish(output: str, manifest: dict) -> dict:
    """Joins the shards' offsets into offsets.npy and marks the manifest complete."""
    parts = [_offsets_path(output, name) for name in manifest["shards"]]
    _save_array(os.path.join(output, "offsets.npy"), np.concatenate([np.load(part) for part in parts]))
    manifest = {**manifest, "complete": True}
    _save_manifest(output, manifest)
    for part in parts:
        os.remove(part)
    return manifest


def _offsets_path(output: str, name: str) -> str:
    return os.path.join(output, name + ".offsets.npy")


def _save_array(path: str, array: np.ndarray) -> None:
    """np.save written whole or not at all (workdir's atomic write), never with pickle."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    workdir.atomic_write_bytes(path, buffer.getvalue())


def _save_manifest(output: str, manifest: dict) -> None:
    workdir.write_json(os.path.join(output, MANIFEST), manifest)
