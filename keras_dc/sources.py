"""Where images come from: a data specification (digits, synthetic, tfds:NAME, a folder) turned into an ImageSource.

Every source is indexable: image n is always image n, whatever the shuffling,
so that the index-to-label tables stay valid. Nothing is downloaded here.
Image folders are checked once when loaded: only regular files of at most
--max_image_mb are opened (never a FIFO, a device or a link to one), and files
TensorFlow cannot decode (empty, truncated, not an image whatever their
extension) are left out before indices are given; every entry left out is
reported. A workdir keeps the list it indexed (a DataIndex): a resumed run
indexes the folder by that list, refuses files it does not hold (a rename would
shift labels) and keeps its place for a file gone or damaged since. A file that
disappears or changes while training is read as missing: skipped, not a crash.
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import struct
import threading
import warnings

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_dc import progress
from keras_dc.config import MAX_IMAGE_MB, MAX_IMAGE_PIXELS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
SYNTHETIC_CLASSES = 10


class SourceError(ValueError):
    """A data specification that names no readable images."""


class DataDirError(SourceError):
    """A TFDS data set was named without the folder where it was prepared."""


class DataChangedError(SourceError):
    """A folder holds image files that the list a workdir indexed does not: resuming would shift labels."""


@dataclasses.dataclass(frozen=True)
class DataIndex:
    """The image files of a folder, in index order: paths relative to the folder and sizes in bytes."""

    names: tuple[str, ...]
    file_bytes: np.ndarray  # (N,) int64


@dataclasses.dataclass
class ImageSource:
    """An indexable set of RGB images, with labels when the data has them (used for metrics only)."""

    description: str
    num_images: int
    images: np.ndarray | None = None  # (N, H, W, 3) uint8, for in-memory sources
    paths: np.ndarray | None = None  # (N,) str, for image folders
    labels: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    unreadable: tuple[str, ...] = ()  # entries of a folder that were left out (or are missing), with reasons
    sizes: np.ndarray | None = None  # (N, 2) heights and widths of images of several shapes, padded into `images`
    index: DataIndex | None = None  # for image folders: the files indexed (what a workdir records)
    usable: np.ndarray | None = None  # (N,) bool: which indexed files were found readable when loaded
    failed: set[str] = dataclasses.field(default_factory=set)  # files of `paths` that could not be read in use
    max_pixels: int = MAX_IMAGE_PIXELS  # a file whose header says more is never decoded (read as missing)

    @property
    def same_size(self) -> bool:
        """Whether the images are in memory and all of one shape, so that a batch can be gathered at once."""
        return self.images is not None and self.sizes is None

    def load(self, index: tf.Tensor) -> tf.Tensor:
        """The uint8 (H, W, 3) image with this index, at its own shape, as a tensor op (no Python per
        example); a vector of indices gathers a batch when the images are all of one shape."""
        return self.load_checked(index)[0]

    def load_checked(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(image, whether it could be read): a file of a folder that is gone, changed size or is no
        longer a regular file gives a small black image and False, and is added to `failed`."""
        if self.sizes is not None:
            size = tf.gather(self._size_tensor, index)
            return tf.gather(self._image_tensor, index)[:size[0], :size[1]], tf.constant(True)
        if self.images is not None:
            return tf.gather(self._image_tensor, index), tf.constant(True)
        payload = tf.numpy_function(self._read, [tf.gather(self._path_tensor, index),
                                                 tf.gather(self._bytes_tensor, index)], tf.string, stateful=True)
        payload.set_shape([])
        found = tf.strings.length(payload) > 0
        return decode_bytes(tf.where(found, payload, BLANK_BMP)), found  # no tf.cond: cheaper per image

    def _read(self, path: bytes, expected_bytes: np.int64) -> bytes:
        """The bytes of the file if it is still the regular file of the expected size and its header
        promises at most max_pixels pixels, else b""."""
        payload = read_regular_file(path, int(expected_bytes))
        if payload and image_pixels(io.BytesIO(payload)) > self.max_pixels:
            payload = b""
        if not payload:
            with self._lock:
                self.failed.add(os.fsdecode(path))
        return payload

    def __post_init__(self):
        if self.images is not None:
            self._image_tensor = tf.constant(self.images)
        if self.sizes is not None:
            self._size_tensor = tf.constant(self.sizes.astype(np.int32))
        if self.paths is not None:
            self._path_tensor = tf.constant(self.paths)
            expected = np.full(len(self.paths), -1)  # -1: any size; -2: none (the loader skips the file)
            if self.index is not None:
                expected = np.where(self.usable, self.index.file_bytes, -2)
            self._bytes_tensor = tf.constant(np.asarray(expected, np.int64))
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


def blank_bmp(side: int = 8) -> bytes:
    """A black side x side 24-bit BMP, decoded in place of a file that cannot be read."""
    pixels = b"\0" * ((side * 3 + 3) // 4 * 4 * side)  # rows padded to 4 bytes
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + pixels


BLANK_BMP = blank_bmp()


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
    """The uint8 (H, W, 3) image encoded in `payload` (JPEG, PNG, GIF, BMP or WebP)."""
    image = tf.io.decode_image(payload, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decode_file(path: tf.Tensor) -> tf.Tensor:
    """The uint8 (H, W, 3) image in a file (JPEG, PNG, GIF, BMP or WebP, whatever its extension)."""
    return decode_bytes(tf.io.read_file(path))


def readable(paths: np.ndarray, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A boolean mask of the files that decode_file reads without error, decoded in parallel; a file whose
    header states more than max_pixels pixels is never decoded (False).

    The same decoder as training is used, so a file kept here cannot fail there.
    """
    small = np.array([image_pixels(path) <= max_pixels for path in paths], bool)
    if not small.any():
        return small
    path_tensor = tf.constant(paths[small])
    dataset = tf.data.Dataset.range(len(path_tensor)).map(
        lambda index: (index, tf.shape(decode_file(tf.gather(path_tensor, index)))),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    mask = np.zeros(len(path_tensor), bool)
    stage = progress.Stage("data: reading the folder", len(path_tensor), "file")
    for done, (index, _) in enumerate(dataset.as_numpy_iterator(), 1):
        mask[index] = True
        stage.update(done)
    stage.update(len(path_tensor))
    small[small] = mask
    return small


def load_source(spec: str, image_size: int, tfds_data_dir: str = "", synthetic_size: int = 512,
                seed: int = 0, max_image_mb: float = MAX_IMAGE_MB, index: DataIndex | None = None,
                max_image_pixels: int = MAX_IMAGE_PIXELS) -> ImageSource:
    """Parses a `--data` value: digits, synthetic, tfds:NAME[:SPLIT] or a folder path (read with
    folder_source's `max_image_mb`, `index` and `max_image_pixels`)."""
    if spec == "digits":
        return digits_source(image_size)
    if spec == "synthetic":
        return synthetic_source(synthetic_size, image_size, seed)
    if spec.startswith("tfds:"):
        return tfds_source(spec, image_size, tfds_data_dir)
    return dataclasses.replace(folder_source(spec, max_image_mb, index, max_image_pixels),
                               max_pixels=max_image_pixels)


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


def folder_source(path: str, max_image_mb: float = MAX_IMAGE_MB, index: DataIndex | None = None,
                  max_image_pixels: int = MAX_IMAGE_PIXELS) -> ImageSource:
    """Every image file below `path`; first-level subfolders, if any, name the classes. With `index` (the
    list a workdir indexed), files keep their indices; a file the index lacks is a DataChangedError."""
    if not os.path.isdir(path):
        raise SourceError(f"{path!r} is not digits, synthetic, tfds:NAME or an existing folder")
    found, skipped = scan_folder(path, int(max_image_mb * 2**20))
    if index is not None:
        return indexed_folder_source(path, found, skipped, index, max_image_pixels)
    if not found:
        raise SourceError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found below {path}"
                          + (f"; skipped: {', '.join(skipped[:3])}" if skipped else ""))
    names = sorted(found)
    mask = readable(np.array([os.path.join(path, name) for name in names]), max_image_pixels)
    unreadable = tuple(skipped) + tuple(f"{os.path.join(path, name)} (cannot be decoded)"
                                        for name, ok in zip(names, mask) if not ok)
    names = [name for name, ok in zip(names, mask) if ok]
    if not names:
        raise SourceError(f"none of the {len(unreadable)} image files below {path} can be decoded "
                          f"(first: {unreadable[0]})")
    index = DataIndex(tuple(names), np.array([found[name] for name in names], np.int64))
    return _folder_images(path, index, np.ones(len(names), bool), unreadable)


def indexed_folder_source(path: str, found: dict[str, int], skipped: list[str], index: DataIndex,
                          max_image_pixels: int = MAX_IMAGE_PIXELS) -> ImageSource:
    """The folder's files in the order of `index`; files gone, resized or undecodable since keep their
    index and are reported (training skips them); files the index lacks are refused."""
    indexed = set(index.names)
    new = sorted(name for name in found if name not in indexed)
    if new:
        raise DataChangedError(f"{len(new)} image files below {path} are not in the list this workdir indexed "
                               f"(first: {os.path.join(path, new[0])}): files were added or renamed, which "
                               f"would shift every label; restore the data, use another --workdir, or pass "
                               f"--reindex_data to index the folder again and re-cluster")
    same = np.array([found.get(name) == size for name, size in zip(index.names, index.file_bytes)])
    mask = np.zeros(len(index.names), bool)
    mask[same] = readable(np.array([os.path.join(path, name) for name, ok in zip(index.names, same) if ok]),
                          max_image_pixels)
    unreadable = tuple(skipped) + tuple(
        f"{os.path.join(path, name)} ({'cannot be decoded' if ok else 'missing or changed since indexed'})"
        for name, ok, good in zip(index.names, same, mask) if not good)
    if not mask.any():
        raise SourceError(f"none of the {len(index.names)} image files indexed below {path} can be read now "
                          f"(first: {unreadable[0]})")
    return _folder_images(path, index, mask, unreadable)


def _folder_images(path: str, index: DataIndex, usable: np.ndarray, unreadable: tuple[str, ...]) -> ImageSource:
    """The ImageSource of the indexed files of a folder (labelled when every file is in a subfolder)."""
    top = [name.split("/")[0] if "/" in name else "" for name in index.names]
    labels = class_names = None
    if all(top):
        class_names = tuple(sorted(set(top)))
        labels = np.searchsorted(np.array(class_names), np.array(top)).astype(np.int32)
    return ImageSource(f"folder {path} ({int(usable.sum())} images)", len(index.names),
                       paths=np.array([os.path.join(path, name) for name in index.names]), labels=labels,
                       class_names=class_names, unreadable=unreadable, index=index, usable=usable)


def scan_folder(path: str, max_bytes: int) -> tuple[dict[str, int], list[str]]:
    """({path relative to `path`: size} of the regular image files of at most max_bytes below it,
    every entry left out with the reason): special files, links to them, unreadable folders,
    names that are not UTF-8 and oversized files are never opened."""
    found: dict[str, int] = {}
    skipped: list[str] = []
    on_error = lambda error: skipped.append(f"{printable(error.filename)} (unreadable folder: {error.strerror})")  # noqa: E731
    for root, folders, names in os.walk(path, onerror=on_error):
        skipped.extend(f"{printable(os.path.join(root, name))} (link to a folder, not followed)"
                       for name in folders if os.path.islink(os.path.join(root, name)))
        outputs = [name for name in folders if name == "cluster_grids" or os.path.exists(os.path.join(root, name,
                                                                                                       ".lock"))]
        skipped.extend(f"{printable(os.path.join(root, name))} (keras-dc's outputs, not data)" for name in outputs)
        folders[:] = [name for name in folders if name not in outputs]
        for name in sorted(names):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            full = os.path.join(root, name)
            reason = _entry_problem(full, max_bytes)
            if reason:
                skipped.append(f"{printable(full)} ({reason})")
            else:
                found[os.path.relpath(full, path).replace(os.sep, "/")] = os.stat(full).st_size
    return found, sorted(skipped)


def _entry_problem(path: str, max_bytes: int) -> str:
    """Why the entry at `path` is not an image file to open, or "" when it is one."""
    if printable(path) != path:
        return "file name is not UTF-8"
    try:
        info = os.stat(path)
    except OSError as error:
        return f"cannot be read: {error.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size > max_bytes:
        return f"{info.st_size / 2**20:.0f} MB, larger than --max_image_mb={max_bytes / 2**20:g}"
    return ""


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
