"""Where images come from: a data specification (digits, synthetic, tfds:NAME, shards:DIR, a folder)
turned into an ImageSource.

Every source is indexable: image n is always image n, whatever the shuffling,
so that the index-to-label tables stay valid. Nothing is downloaded here.
Image folders are listed, never decoded, when loaded: only regular files of at
most --max_image_mb are indexed (never a FIFO, a device or a link to one), and
every entry left out is reported. A file is read and decoded when training or
clustering needs it; one that cannot be (empty, truncated, not an image whatever
its extension, gone or changed since indexed) is skipped there, not a crash: its
example weighs 0, it is counted, and it is never tried again in this run. A
workdir keeps the list it indexed (a DataIndex, marking the files that failed):
a resumed run indexes the folder by that list, refuses files it does not hold
(a rename would shift labels), keeps its place for a file gone or damaged
since, and skips the failed ones without trying them again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import stat
import threading
import warnings
from collections.abc import Iterable
from typing import Protocol

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_dc import progress
from keras_dc.config import MAX_IMAGE_MB, MAX_IMAGE_PIXELS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
SYNTHETIC_CLASSES = 10
SHARDS_PREFIX = "shards:"
SCAN_THREADS = 16  # folders listed at once: stat calls wait on the file system, not on the GIL


class SourceError(ValueError):
    """A data specification that names no readable images."""


class DataDirError(SourceError):
    """A TFDS data set was named without the folder where it was prepared."""


class DataChangedError(SourceError):
    """A folder holds image files that the list a workdir indexed does not: resuming would shift labels."""


@dataclasses.dataclass(frozen=True)
class DataIndex:
    """The image files of a folder, in index order: paths relative to the folder, sizes in bytes, and
    which failed to read or decode when used (updated in place as training finds them).

    The paths are one UTF-8 blob, each followed by a NUL (which no file name holds), with the start of
    each: 10^8 paths take their bytes plus 8 each, not the ~80 of as many Python strings.
    """

    names_utf8: np.ndarray  # (B,) uint8
    starts: np.ndarray  # (N + 1,) int64: path i is names_utf8[starts[i]:starts[i + 1] - 1]
    file_bytes: np.ndarray  # (N,) int64
    failed: np.ndarray  # (N,) bool

    @classmethod
    def from_blob(cls, names_utf8: np.ndarray, file_bytes: np.ndarray,
                  failed: np.ndarray | None = None) -> DataIndex:
        """The index of NUL-terminated paths in `names_utf8` (as saved in a workdir)."""
        starts = np.concatenate([[0], np.flatnonzero(names_utf8 == 0) + 1]).astype(np.int64)
        flags = np.zeros(len(file_bytes), bool) if failed is None else np.asarray(failed, bool).copy()
        return cls(names_utf8, starts, np.asarray(file_bytes, np.int64), flags)

    @classmethod
    def from_names(cls, names: Iterable[str], file_bytes: np.ndarray) -> DataIndex:
        """The index of these relative paths and sizes, none known to fail."""
        blob = "".join(f"{name}\0" for name in names).encode("utf-8")
        return cls.from_blob(np.frombuffer(blob, np.uint8), file_bytes)

    def __len__(self) -> int:
        return len(self.file_bytes)

    def name(self, position: int) -> str:
        """The relative path of image `position`."""
        return self.names_utf8[self.starts[position]:self.starts[position + 1] - 1].tobytes().decode("utf-8")

    @property
    def names(self) -> list[str]:
        """Every relative path, in index order (a list of Python strings: for comparisons, not to keep)."""
        return self.names_utf8.tobytes().decode("utf-8").split("\0")[:-1]


class Reader(Protocol):
    """Reads the encoded bytes of image n of a source that lives in files."""

    def read(self, position: int) -> bytes:
        """The encoded image, or b"" when it cannot be read (gone, changed, damaged)."""

    def describe(self, position: int) -> str:
        """Where image `position` lives, in words (a path, a shard record)."""


@dataclasses.dataclass(frozen=True)
class FolderReader:
    """The files of a DataIndex below `root`, each read only if it is still the regular file of its size."""

    root: str
    index: DataIndex

    def read(self, position: int) -> bytes:
        return read_regular_file(self.describe(position), int(self.index.file_bytes[position]))

    def describe(self, position: int) -> str:
        return os.path.join(self.root, self.index.name(position))


@dataclasses.dataclass
class ImageSource:
    """An indexable set of RGB images, with labels when the data has them (used for metrics only)."""

    description: str
    num_images: int
    images: np.ndarray | None = None  # (N, H, W, 3) uint8, for in-memory sources
    reader: Reader | None = None  # for images read from files (a folder, shards)
    labels: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    unreadable: tuple[str, ...] = ()  # entries left out or skipped from the start, with reasons
    sizes: np.ndarray | None = None  # (N, 2) heights and widths of images of several shapes, padded into `images`
    index: DataIndex | None = None  # for image folders: the files indexed (what a workdir records)
    usable: np.ndarray | None = None  # (N,) bool, for `reader`: False for images skipped without trying
    failed: set[str] = dataclasses.field(default_factory=set)  # images of `reader` that failed in use
    max_pixels: int = MAX_IMAGE_PIXELS  # an image whose header says more is never decoded (read as missing)

    @property
    def same_size(self) -> bool:
        """Whether the images are in memory and all of one shape, so that a batch can be gathered at once."""
        return self.images is not None and self.sizes is None

    def load(self, index: tf.Tensor) -> tf.Tensor:
        """The uint8 (H, W, 3) image with this index, at its own shape, as a tensor op (no Python per
        example); a vector of indices gathers a batch when the images are all of one shape."""
        return self.load_checked(index)[0]

    def load_checked(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(image, whether it could be read and decoded): an image of `reader` that cannot be gives a
        small black image and False, is added to `failed` and is not tried again. Its first decode in
        a run is guarded; later reads of the same bytes (the reader checks the file's size) are not,
        which saves the guard's cost (docs/scaling.md, "Millions of images")."""
        if self.sizes is not None:
            size = tf.gather(self._size_tensor, index)
            return tf.gather(self._image_tensor, index)[:size[0], :size[1]], tf.constant(True)
        if self.images is not None:
            return tf.gather(self._image_tensor, index), tf.constant(True)
        payload, decoded_before = tf.numpy_function(self._read, [index], (tf.string, tf.bool), stateful=True)
        payload.set_shape([])
        decoded_before.set_shape([])
        return tf.cond(decoded_before, lambda: (decode_bytes(payload), tf.constant(True)),
                       lambda: self._first_decode(index, payload))

    def _first_decode(self, index: tf.Tensor, payload: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """guarded_decode(payload), its outcome recorded for image `index`."""
        image, decoded = guarded_decode(payload)
        found = tf.numpy_function(self._record_decode, [index, decoded, tf.strings.length(payload) > 0], tf.bool,
                                  stateful=True)
        found.set_shape([])
        return image, found

    def _read(self, position: np.int32) -> tuple[bytes, np.bool_]:
        """(the encoded bytes of an image still usable, whether they decoded before in this run), or
        (b"", False) (and the image is marked failed)."""
        payload = self.reader.read(int(position)) if self.usable[position] else b""
        if payload and image_pixels(io.BytesIO(payload)) > self.max_pixels:
            payload = b""
        if not payload and self.usable[position]:
            self._fail(int(position))
        return payload, np.bool_(bool(payload) and self._decoded[position])

    def _record_decode(self, position: np.int32, decoded: np.bool_, read: np.bool_) -> np.bool_:
        """Records a first decode: a success spares the image the guard from then on; bytes that were
        read and do not decode are a failure. Returns `decoded`."""
        if decoded:
            self._decoded[position] = True
        elif read:
            self._fail(int(position))
        return np.bool_(decoded)

    def _fail(self, position: int) -> None:
        """Marks an image that could not be read or decoded: skipped from now on, and in a resumed run."""
        with self._lock:
            self.usable[position] = False
            if self.index is not None:
                self.index.failed[position] = True
            self.failed.add(self.reader.describe(position))

    def __post_init__(self):
        if self.images is not None:
            self._image_tensor = tf.constant(self.images)
        if self.sizes is not None:
            self._size_tensor = tf.constant(self.sizes.astype(np.int32))
        if self.reader is not None and self.usable is None:
            self.usable = np.ones(self.num_images, bool)
        if self.reader is not None:
            self._decoded = np.zeros(self.num_images, bool)  # decoded whole once in this run
        self._lock = threading.Lock()


def read_regular_file(path: bytes | str, expected_bytes: int = -1) -> bytes:
    """The contents of `path`, or b"" unless it is a regular file (opened without blocking, so a FIFO
    never hangs) of `expected_bytes` bytes (any size for -1)."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return b""
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode) or expected_bytes not in (-1, info.st_size):
            return b""
        payload = os.read(handle, info.st_size + 1)  # one read: a regular file gives all it holds
        return payload if len(payload) == info.st_size else b""  # else it changed while being read
    except OSError:
        return b""
    finally:
        os.close(handle)


BLANK_SIDE = 8  # the black image that stands for one that cannot be read (its example weighs 0)


def image_pixels(file) -> int:
    """Width x height as an image file's header states them (a path or a binary file object; PIL reads no
    pixel data), so that an image too large to decode is refused before it is; 0 when it cannot tell."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                return image.width * image.height
    except Image.DecompressionBombError:  # PIL's own limit: twice Image.MAX_IMAGE_PIXELS
        return 2**63 - 1
    except Exception:  # noqa: BLE001  (not an image PIL knows: TensorFlow's decoder decides)
        return 0


def decode_bytes(payload: tf.Tensor) -> tf.Tensor:
    """The uint8 (H, W, 3) image encoded in `payload` (JPEG, PNG, GIF, BMP or WebP); fails on anything else."""
    image = tf.io.decode_image(payload, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def guarded_decode(payload: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(decode_bytes(payload), True), or (a black image, False) when it fails: the decode runs in a
    one-element dataset whose errors are ignored, the graph's own try/except, so that a bad file
    found in the middle of an epoch costs one example and not the run."""
    decoded = tf.data.Dataset.from_tensors(payload).map(decode_bytes).ignore_errors()
    blank = tf.data.Dataset.from_tensors((tf.zeros([BLANK_SIDE, BLANK_SIDE, 3], tf.uint8), False))
    return decoded.map(lambda image: (image, True)).concatenate(blank).take(1).get_single_element()


def load_source(spec: str, image_size: int, tfds_data_dir: str = "", synthetic_size: int = 512,
                seed: int = 0, max_image_mb: float = MAX_IMAGE_MB, index: DataIndex | None = None,
                max_image_pixels: int = MAX_IMAGE_PIXELS) -> ImageSource:
    """Parses a `--data` value: digits, synthetic, tfds:NAME[:SPLIT], shards:DIR (written by
    tools/make_shards.py) or a folder path (read with folder_source's `max_image_mb` and `index`); an
    image of a folder or shards whose header states more than `max_image_pixels` is never decoded."""
    if spec == "digits":
        return digits_source(image_size)
    if spec == "synthetic":
        return synthetic_source(synthetic_size, image_size, seed)
    if spec.startswith("tfds:"):
        return tfds_source(spec, image_size, tfds_data_dir)
    if spec.startswith(SHARDS_PREFIX):
        from keras_dc import shards

        return dataclasses.replace(shards.shard_source(spec[len(SHARDS_PREFIX):]), max_pixels=max_image_pixels)
    return dataclasses.replace(folder_source(spec, max_image_mb, index), max_pixels=max_image_pixels)


def labelled_like(val: ImageSource, train: ImageSource) -> ImageSource:
    """`val` with its classes numbered as `train` numbers them, matched by name: each source numbers
    its own classes in sorted order, so a validation set lacking a class would shift every label.
    A validation class unknown to training is a SourceError."""
    if val.class_names is None or train.class_names is None or val.class_names == train.class_names:
        return val
    unknown = [name for name in val.class_names if name not in train.class_names]
    if unknown:
        raise SourceError(f"class {unknown[0]!r} of {val.description} is not a class of the training data "
                          f"({', '.join(train.class_names[:10])}{', ...' if len(train.class_names) > 10 else ''})")
    numbers = np.array([train.class_names.index(name) for name in val.class_names], np.int32)
    return dataclasses.replace(val, labels=numbers[val.labels], class_names=train.class_names)


def digits_source(image_size: int) -> ImageSource:
    """scikit-learn's bundled 8x8 digits (1,797 images), upscaled to image_size, grey as RGB."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = (digits.images[..., None] * (255.0 / 16.0)).astype(np.float32)
    resized = tf.image.resize(grey, (image_size, image_size), method="bilinear").numpy()
    images = np.repeat(np.clip(np.round(resized), 0, 255).astype(np.uint8), 3, axis=-1)
    names = tuple(str(name) for name in digits.target_names)
    return ImageSource("digits (scikit-learn)", len(images), images=images,
                       labels=digits.target.astype(np.int32), class_names=names)


def synthetic_source(num_images: int, image_size: int, seed: int = 0) -> ImageSource:
    """Generated images of SYNTHETIC_CLASSES classes of coloured gratings, for tests and benchmarks."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, SYNTHETIC_CLASSES, num_images).astype(np.int32)
    grid = np.linspace(-1.0, 1.0, image_size, dtype=np.float32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    angle = labels * (np.pi / SYNTHETIC_CLASSES)
    frequency = 2.0 + (labels % 3) * 2.0
    phase = rng.uniform(0, 2 * np.pi, num_images)
    wave = np.sin(frequency[:, None, None] * np.pi * (np.cos(angle)[:, None, None] * xx
                                                       + np.sin(angle)[:, None, None] * yy) + phase[:, None, None])
    colour = np.stack([(labels % 2) * 0.6 + 0.4, ((labels // 2) % 2) * 0.6 + 0.4, np.full(num_images, 0.7)], -1)
    noise = rng.normal(0.0, 0.15, (num_images, image_size, image_size, 3))
    images = 127.5 * (1.0 + 0.8 * wave[..., None] * colour[:, None, None, :] + noise)
    images = np.clip(images, 0, 255).astype(np.uint8)
    names = tuple(f"class_{c}" for c in range(SYNTHETIC_CLASSES))
    return ImageSource(f"synthetic ({num_images} images)", num_images, images=images, labels=labels,
                       class_names=names)


def folder_source(path: str, max_image_mb: float = MAX_IMAGE_MB, index: DataIndex | None = None) -> ImageSource:
    """Every image file below `path` (listed, not read); first-level subfolders, if any, name the classes.
    With `index` (the list a workdir indexed), files keep their indices; a file the index lacks is a
    DataChangedError."""
    if not os.path.isdir(path):
        raise SourceError(f"{path!r} is not digits, synthetic, tfds:NAME, shards:DIR or an existing folder")
    found, skipped = scan_folder(path, int(max_image_mb * 2**20))
    if index is not None:
        return indexed_folder_source(path, found, skipped, index)
    if not found:
        raise SourceError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found below {path}"
                          + (f"; skipped: {', '.join(skipped[:3])}" if skipped else ""))
    names = sorted(found)
    index = DataIndex.from_names(names, np.fromiter((found[name] for name in names), np.int64, len(names)))
    del found
    return _folder_images(path, index, names, np.ones(len(names), bool), tuple(skipped))


def indexed_folder_source(path: str, found: dict[str, int], skipped: list[str], index: DataIndex) -> ImageSource:
    """The folder's files in the order of `index`; files gone or resized since, and those that failed
    in use before, keep their index and are reported (training skips them); files the index lacks
    are refused, unless they do not decode (an index of an earlier version left such files out)."""
    names = index.names
    sizes = np.fromiter((found.get(name, -1) for name in names), np.int64, len(names))
    same = sizes == index.file_bytes
    left_out = []
    if len(found) > np.count_nonzero(sizes >= 0):  # files the index lacks: rare, so only then a set
        indexed = set(names)
        left_out = _undecodable_new_files(path, sorted(name for name in found if name not in indexed))
    del found
    usable = same & ~index.failed
    reasons = ("missing or changed since indexed", "could not be read or decoded in an earlier run")
    unreadable = tuple(sorted(skipped + left_out)) + tuple(f"{os.path.join(path, name)} ({reasons[int(ok)]})"
                                                           for name, ok, good in zip(names, same, usable) if not good)
    if not usable.any():
        raise SourceError(f"none of the {len(names)} image files indexed below {path} can be read now "
                          f"(first: {unreadable[0]})")
    return _folder_images(path, index, names, usable, unreadable)


def _undecodable_new_files(path: str, new: list[str]) -> list[str]:
    """The skipped entries of files not in a workdir's index that cannot be decoded (so no index
    is owed to them); a DataChangedError at the first that decodes: it was added or renamed."""
    left_out = []
    for number, name in enumerate(new):
        payload = read_regular_file(os.path.join(path, name))
        if payload and guarded_decode(tf.constant(payload))[1]:
            raise DataChangedError(f"{len(new) - number} image files below {path} are not in the list this workdir "
                                   f"indexed (first: {os.path.join(path, name)}): files were added or renamed, "
                                   f"which would shift every label; restore the data, use another --workdir, or "
                                   f"pass --reindex_data to index the folder again and re-cluster")
        left_out.append(f"{os.path.join(path, name)} (cannot be decoded, not indexed)")
    return left_out


def _folder_images(path: str, index: DataIndex, names: list[str], usable: np.ndarray,
                   unreadable: tuple[str, ...]) -> ImageSource:
    """The ImageSource of the indexed files `names` of a folder (labelled when every file is in a subfolder)."""
    labels, class_names = _class_labels(names)
    return ImageSource(f"folder {path} ({int(usable.sum())} images)", len(index), reader=FolderReader(path, index),
                       labels=labels, class_names=class_names, unreadable=unreadable, index=index, usable=usable)


def _class_labels(names: list[str]) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """(class of each path, the sorted class names): the first-level subfolders, or (None, None) when
    some file is not in one. Each path's class is found without keeping a string per path."""
    seen: dict[str, int] = {}
    first = np.fromiter((seen.setdefault(name.partition("/")[0] if "/" in name else "", len(seen))
                         for name in names), np.int32, len(names))
    if "" in seen:
        return None, None
    class_names = tuple(sorted(seen))
    rank = {name: number for number, name in enumerate(class_names)}
    return np.array([rank[name] for name in seen], np.int32)[first], class_names


def scan_folder(path: str, max_bytes: int) -> tuple[dict[str, int], list[str]]:
    """({path relative to `path`: size} of the regular image files of at most max_bytes below it,
    every entry left out with the reason): special files, links to them, unreadable folders,
    names that are not UTF-8 and oversized files are never opened. The first-level folders are
    listed SCAN_THREADS at a time, with their progress."""
    prefix = os.path.join(path, "")
    found: dict[str, int] = {}
    skipped: list[str] = []
    subfolders = _scan_one(path, prefix, max_bytes, found, skipped)
    stage = progress.Stage("data: listing the folder", len(subfolders), "folder")
    with concurrent.futures.ThreadPoolExecutor(SCAN_THREADS) as pool:
        parts = pool.map(lambda folder: _scan_tree(folder, prefix, max_bytes), subfolders)
        for done, (part, part_skipped) in enumerate(parts, 1):
            found.update(part)
            skipped.extend(part_skipped)
            stage.update(done)
    return found, sorted(skipped)


def _scan_tree(folder: str, prefix: str, max_bytes: int) -> tuple[dict[str, int], list[str]]:
    """scan_folder's result for the tree below `folder`, paths relative to `prefix`."""
    found: dict[str, int] = {}
    skipped: list[str] = []
    pending = [folder]
    while pending:
        pending.extend(_scan_one(pending.pop(), prefix, max_bytes, found, skipped))
    return found, skipped


def _scan_one(folder: str, prefix: str, max_bytes: int, found: dict[str, int], skipped: list[str]) -> list[str]:
    """Adds the image files of `folder` itself to `found` (and what it leaves out to `skipped`);
    returns its subfolders (links to folders are reported, never followed)."""
    try:
        with os.scandir(folder) as listing:
            entries = list(listing)
    except OSError as error:
        skipped.append(f"{printable(folder)} (unreadable folder: {error.strerror})")
        return []
    subfolders = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and _keras_dc_outputs(entry.path):
            skipped.append(f"{printable(entry.path)} (keras-dc's outputs, not data)")
        elif entry.is_dir(follow_symlinks=False):
            subfolders.append(entry.path)
        elif entry.is_symlink() and entry.is_dir():
            skipped.append(f"{printable(entry.path)} (link to a folder, not followed)")
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
            size, reason = _entry_size(entry, max_bytes)
            if reason:
                skipped.append(f"{printable(entry.path)} ({reason})")
            else:
                found[entry.path[len(prefix):]] = size
    return sorted(subfolders)


def _keras_dc_outputs(folder: str) -> bool:
    """A folder of cluster pictures or a workdir (it holds a run's .lock) inside the data folder."""
    return os.path.basename(folder) == "cluster_grids" or os.path.exists(os.path.join(folder, ".lock"))


def _entry_size(entry: os.DirEntry, max_bytes: int) -> tuple[int, str]:
    """(size, "") of an image file to index, or (0, why it is not one)."""
    if printable(entry.path) != entry.path:
        return 0, "file name is not UTF-8"
    try:
        info = entry.stat()  # follows a link, to what would be opened
    except OSError as error:
        return 0, f"cannot be read: {error.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return 0, "not a regular file"
    if info.st_size > max_bytes:
        return 0, f"{info.st_size / 2**20:.0f} MB, larger than --max_image_mb={max_bytes / 2**20:g}"
    return info.st_size, ""


def printable(path: str) -> str:
    """`path` with bytes that are not UTF-8 shown as \\xNN escapes, so that it can be printed and logged."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def tfds_source(spec: str, image_size: int, data_dir: str) -> ImageSource:
    """A TFDS data set the user prepared in `data_dir`, read into memory with each image's shorter
    side at what the clustering view needs (image_size * 256/224) and its aspect ratio kept."""
    parts = spec.split(":")
    name, split = parts[1], (parts[2] if len(parts) > 2 else "train")
    if not data_dir or not os.path.isdir(data_dir):
        raise DataDirError(f"needs the folder where {name} was prepared "
                          f"(prepare it once with: tfds build {name} --data_dir=DIR)")
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        dataset = builder.as_dataset(split=split, shuffle_files=False)
    except Exception as error:  # noqa: BLE001 - TFDS raises many types for a missing preparation
        raise SourceError(f"cannot read {name}:{split} from {data_dir} ({type(error).__name__}); "
                          f"prepare it with: tfds build {name} --data_dir={data_dir}") from None
    shorter_side = round(image_size * 256 / 224)
    images, labels = [], []
    for example in dataset.as_numpy_iterator():
        images.append(shorter_side_resized(example["image"], shorter_side))
        if "label" in example:
            labels.append(example["label"])
    label_array = np.array(labels, np.int32) if len(labels) == len(images) else None
    return in_memory_source(f"tfds {name}:{split} ({len(images)} images)", images, label_array)


def shorter_side_resized(image: np.ndarray, side: int) -> np.ndarray:
    """A uint8 RGB copy of `image` whose shorter side is `side` pixels, its aspect ratio kept."""
    height, width = image.shape[:2]
    scale = side / min(height, width)
    size = (max(side, round(height * scale)), max(side, round(width * scale)))
    resized = tf.image.resize(image, size, antialias=True).numpy()
    resized = np.clip(np.round(resized), 0, 255).astype(np.uint8)
    return np.repeat(resized, 3, axis=-1) if resized.shape[-1] == 1 else resized


def in_memory_source(description: str, images: list[np.ndarray], labels: np.ndarray | None) -> ImageSource:
    """An ImageSource of these uint8 RGB images; images of several shapes are zero-padded into one
    array and keep their own sizes, so that every view is taken from the image's true shape."""
    shapes = np.array([image.shape[:2] for image in images], np.int32)
    if np.all(shapes == shapes[0]):
        return ImageSource(description, len(images), images=np.stack(images), labels=labels)
    padded = np.zeros((len(images), *shapes.max(axis=0), 3), np.uint8)
    for slot, image in zip(padded, images):
        slot[:image.shape[0], :image.shape[1]] = image
    return ImageSource(description, len(images), images=padded, labels=labels, sizes=shapes)
