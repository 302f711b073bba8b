"""Where images come from: a data specification (digits, synthetic, tfds:NAME, a folder) turned into an ImageSource.

Every source is indexable: image n is always image n, whatever the shuffling,
so that the index-to-label tables stay valid. Nothing is downloaded here.
Image folders are checked once when loaded: files TensorFlow cannot decode
(empty, truncated, not an image whatever their extension) are left out before
indices are given, so training never meets them and the indices stay stable.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
SYNTHETIC_CLASSES = 10


class SourceError(ValueError):
    """A data specification that names no readable images."""


class DataDirError(SourceError):
    """A TFDS data set was named without the folder where it was prepared."""


@dataclasses.dataclass
class ImageSource:
    """An indexable set of RGB images, with labels when the data has them (used for metrics only)."""

    description: str
    num_images: int
    images: np.ndarray | None = None  # (N, H, W, 3) uint8, for in-memory sources
    paths: np.ndarray | None = None  # (N,) str, for image folders
    labels: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    unreadable: tuple[str, ...] = ()  # image files of a folder that were left out
    sizes: np.ndarray | None = None  # (N, 2) heights and widths of images of several shapes, padded into `images`

    @property
    def same_size(self) -> bool:
        """Whether the images are in memory and all of one shape, so that a batch can be gathered at once."""
        return self.images is not None and self.sizes is None

    def load(self, index: tf.Tensor) -> tf.Tensor:
        """The uint8 (H, W, 3) image with this index, at its own shape, as a tensor op (no Python per
        example); a vector of indices gathers a batch when the images are all of one shape."""
        if self.sizes is not None:
            size = tf.gather(self._size_tensor, index)
            return tf.gather(self._image_tensor, index)[:size[0], :size[1]]
        if self.images is not None:
            return tf.gather(self._image_tensor, index)
        return decode_file(tf.gather(self._path_tensor, index))

    def __post_init__(self):
        if self.images is not None:
            self._image_tensor = tf.constant(self.images)
        if self.sizes is not None:
            self._size_tensor = tf.constant(self.sizes.astype(np.int32))
        if self.paths is not None:
            self._path_tensor = tf.constant(self.paths)


def decode_file(path: tf.Tensor) -> tf.Tensor:
    """The uint8 (H, W, 3) image in a file (JPEG, PNG, GIF, BMP or WebP, whatever its extension)."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def readable(paths: np.ndarray) -> np.ndarray:
    """A boolean mask of the files that decode_file reads without error, decoded in parallel.

    The same decoder as training is used, so a file kept here cannot fail there.
    """
    path_tensor = tf.constant(paths)
    dataset = tf.data.Dataset.range(len(paths)).map(
        lambda index: (index, tf.shape(decode_file(tf.gather(path_tensor, index)))),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    mask = np.zeros(len(paths), bool)
    mask[[index for index, _ in dataset.as_numpy_iterator()]] = True
    return mask


def load_source(spec: str, image_size: int, tfds_data_dir: str = "", synthetic_size: int = 512,
                seed: int = 0) -> ImageSource:
    """Parses a `--data` value: digits, synthetic, tfds:NAME[:SPLIT] or a folder path."""
    if spec == "digits":
        return digits_source(image_size)
    if spec == "synthetic":
        return synthetic_source(synthetic_size, image_size, seed)
    if spec.startswith("tfds:"):
        return tfds_source(spec, image_size, tfds_data_dir)
    return folder_source(spec)


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


def folder_source(path: str) -> ImageSource:
    """Every image file below `path`; first-level subfolders, if any, name the classes."""
    if not os.path.isdir(path):
        raise SourceError(f"{path!r} is not digits, synthetic, tfds:NAME or an existing folder")
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise SourceError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found below {path}")
    mask = readable(np.array(files))
    unreadable = tuple(name for name, ok in zip(files, mask) if not ok)
    files = [name for name, ok in zip(files, mask) if ok]
    if not files:
        raise SourceError(f"none of the {len(unreadable)} image files below {path} can be decoded "
                          f"(first: {unreadable[0]})")
    top = [os.path.relpath(name, path).split(os.sep)[0] for name in files]
    has_classes = all(os.path.isdir(os.path.join(path, folder)) for folder in top)
    labels = class_names = None
    if has_classes:
        class_names = tuple(sorted(set(top)))
        labels = np.array([class_names.index(folder) for folder in top], np.int32)
    return ImageSource(f"folder {path} ({len(files)} images)", len(files), paths=np.array(files),
                       labels=labels, class_names=class_names, unreadable=unreadable)


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
