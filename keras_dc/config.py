"""Training configuration: one dataclass, its validation and its JSON form.

The command line (tools/train.py) turns flags into a `Config`; the library only
ever sees the dataclass. Validation errors name the flag so that the tool can
print one clear line and stop before any expensive work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

from keras_dc import hierarchy

ARCHITECTURES = ("small", "alexnet", "vgg16_bn", "resnet50")  # keras_dc.backbones builds them
SAMPLING_MODES = ("uniform", "weighted", "none")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker")
CACHE_DTYPES = ("float32", "float16")

VERBOSITIES = (-1, 0, 1, 2)  # -1: keras_dc.progress.AUTO
MAX_IMAGE_MB = 64.0  # larger image files are skipped: a photo is a few MB, a 1 GB ".jpg" is not one to decode
MAX_IMAGE_PIXELS = 89_478_485  # PIL's decompression-bomb limit: a small file can still decode to gigabytes

# Settings that decide the shape of the model, the meaning of the saved
# assignments (cycle n covers epochs n*T..) or of a mid-epoch position (counted
# in batches): a workdir written with other values cannot be resumed.
RESUME_KEYS = ("data", "arch", "image_size", "k", "super_clusters", "rotation", "sobel", "seed",
               "reassign_every", "batch_size", "head_groups", "pretrained")
# Not a setting of the run: a workdir may be moved.
NOT_SETTINGS = ("workdir",)
# Fewer examples than this per sub-class head per step make its gradient (a mean over its own examples)
# too noisy; the paper's batch gives 192 (3,072 images over 16 super-classes).
MIN_EXAMPLES_PER_HEAD = 8


T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric flag accepts: finite, from `low` to `high` (each bound included unless open)."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


BIG = 10**9  # a count no run reaches; larger values are typing mistakes (or attacks), refused before any work
POSITIVE = Range(0, BIG, low_open=True)
COUNT = Range(1, BIG)  # a number of things, at least one
OPTIONAL_COUNT = Range(0, BIG)  # 0 chooses a default or turns the feature off
FRACTION = Range(0, 1, low_open=True)  # of an area or a set: (0, 1]
MOMENTUM = Range(0, 1, high_open=True)
DECAY = Range(0, 1)
LEARNING_RATE = Range(0, 100, low_open=True)
SEED = Range(0, 2**32 - 1)  # numpy's and Keras' global seeds are 32-bit
IMAGE_SIDE = Range(1, 8192)


def check_numbers(values: dict[str, float | list], ranges: dict[str, Range]) -> None:
    """The one check of every tool's numeric flags: each value (or each item of a list flag) is a finite
    number in its flag's Range; else a ConfigError naming the flag. Tools call it before any work."""
    for flag, allowed in ranges.items():
        items = values[flag] if isinstance(values[flag], (list, tuple)) else [values[flag]]
        for item in items:
            try:
                number = float(item)
            except (TypeError, ValueError):
                raise ConfigError(flag, f"{item!r} is not a number") from None
            if number not in allowed:
                raise ConfigError(flag, f"must be a finite number in {allowed}, got {item}")


def check_flag_numbers(flag_values, ranges: dict[str, Range]) -> None:
    """check_numbers on absl's parsed flags (`flag_values` is absl.flags.FLAGS)."""
    check_numbers({flag: flag_values[flag].value for flag in ranges}, ranges)


class ConfigError(ValueError):
    """A user setting is wrong; `flag` names the command-line flag to fix."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"--{flag}: {message}")
        self.flag = flag


@contextlib.contextmanager
def errors_as_flags(flags: dict[type[Exception], str]) -> Iterator[None]:
    """Re-raises a domain error of a type in `flags` (the first that matches, in order) as a
    ConfigError naming that type's flag: how callers that know the flags report the library's errors."""
    try:
        yield
    except tuple(flags) as error:
        flag = next(flag for kind, flag in flags.items() if isinstance(error, kind))
        raise ConfigError(flag, str(error)) from None


@contextlib.contextmanager
def naming_file(path: str) -> Iterator[None]:
    """Gives an OSError of the block that names no file (a full disk's failed write) `path`, so that its
    one-line report says which file could not be written and why."""
    try:
        yield
    except OSError as error:
        if error.errno is None or error.filename:
            raise
        raise OSError(error.errno, error.strerror, path) from None


def result_or_exit(run: Callable[[], T]) -> T:
    """`run()`; a ConfigError instead becomes its one line on stderr and exit status 2, an OSError (a
    damaged or unwritable file) exit status 3: how the tools stop."""
    try:
        return run()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3)


@dataclasses.dataclass
class Config:
    """Every setting of a training run (see README.md for what each one does)."""

    workdir: str = ""
    data: str = "digits"
    tfds_data_dir: str = ""
    arch: str = "small"
    image_size: int = 32
    batch_size: int = 64
    epochs: int = 10
    k: int = 40
    super_clusters: int = 1
    rotation: bool = True
    reassign_every: int = 1
    pca_dim: int = 64
    pca_sample: int = 0
    kmeans_iters: int = 10
    sobel: bool = False
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-5
    decoupled_weight_decay: bool = False
    sampling: str = "uniform"
    min_crop_scale: float = 0.08
    flip: bool = True
    seed: int = 0
    strategy: str = "auto"
    head_groups: str = "1"  # or "auto"; resolved against the replicas by keras_dc.train.check_settings
    precision: str = "float32"
    jit_compile: bool = False
    deterministic: bool = True
    synthetic_size: int = 512
    feature_cache_dir: str = ""
    feature_cache_dtype: str = "float32"
    max_cache_gb: float = 0.0
    eval_every: int = 0
    eval_data: str = ""
    verbose: int = -1  # keras_dc.progress.AUTO: 1 on a terminal, 2 otherwise
    progress_seconds: float = 10.0
    max_image_mb: float = MAX_IMAGE_MB
    max_image_pixels: int = MAX_IMAGE_PIXELS
    reindex_data: bool = False
    pretrained: str = ""  # a backbone.keras, a workdir or a reference checkpoint the body starts from

    @property
    def sub_classes(self) -> int:
        """Number of sub-classes per head: k / m."""
        return hierarchy.sub_classes(self.k, self.super_clusters)

    @property
    def super_classes(self) -> int:
        """Number of super-classes S: 4m with rotation, m without."""
        return hierarchy.num_super_classes(self.super_clusters, self.rotation)

    def to_dict(self) -> dict:
        """Every setting by name, JSON-ready."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """The Config of a saved dict; keys that are not settings (e.g. what a workdir adds) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def _positive(flag: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(flag, f"must be positive, got {value}")


def validate(config: Config) -> None:
    """Checks the settings that need no data; raises ConfigError naming the flag."""
    from keras_dc import backbones

    _check_workdir(config.workdir)
    if not config.data:
        raise ConfigError("data", "is required: digits, synthetic, tfds:NAME[:SPLIT] or a folder of images")
    if config.arch not in ARCHITECTURES:
        raise ConfigError("arch", f"unknown backbone {config.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    minimum = backbones.MIN_IMAGE_SIZE[config.arch]
    if config.image_size < minimum:
        raise ConfigError("image_size", f"{config.image_size} is too small for {config.arch}; use at least {minimum}")
    _check_numbers(config)
    if config.pca_dim > backbones.FEATURE_DIM[config.arch]:
        raise ConfigError("pca_dim", f"{config.pca_dim} is more than the {backbones.FEATURE_DIM[config.arch]} "
                          f"features of {config.arch}")
    _check_clusters(config)
    _check_choice("sampling", config.sampling, SAMPLING_MODES)
    _check_choice("precision", config.precision, PRECISIONS)
    _check_choice("strategy", config.strategy, STRATEGIES)
    _check_choice("verbose", config.verbose, VERBOSITIES)
    _check_choice("feature_cache_dtype", config.feature_cache_dtype, CACHE_DTYPES)
    if config.pretrained:
        from keras_dc import pretrained

        pretrained.check_path(config.pretrained)
    _check_head_groups(config)


def _check_head_groups(config: Config) -> None:
    """What --head_groups needs besides the replicas (checked once the strategy is known)."""
    from keras_dc import head_groups

    with errors_as_flags({head_groups.GroupError: "head_groups"}):
        groups = head_groups.parse(config.head_groups, config.super_classes)
    if groups == 1:
        return
    for flag, refused in (("decoupled_weight_decay", config.decoupled_weight_decay),
                          ("precision", config.precision == "mixed_float16"), ("jit_compile", config.jit_compile)):
        if refused:
            raise ConfigError(flag, f"is not supported with --head_groups={config.head_groups}: a group's heads "
                              f"are updated with torch's coupled decay, without loss scaling or XLA")


# Every numeric setting of a run and the values it accepts (the Config's part of check_numbers).
TRAIN_RANGES = {
    "image_size": IMAGE_SIDE, "batch_size": Range(1, 2**20), "epochs": Range(1, 10**6), "k": COUNT,
    "super_clusters": COUNT, "reassign_every": Range(1, 10**6), "pca_dim": Range(1, 2**16),
    "pca_sample": OPTIONAL_COUNT, "kmeans_iters": Range(1, 10**5), "lr": LEARNING_RATE, "momentum": MOMENTUM,
    "weight_decay": DECAY, "min_crop_scale": FRACTION, "seed": SEED, "synthetic_size": COUNT,
    "max_cache_gb": Range(0, 10**6), "eval_every": OPTIONAL_COUNT, "verbose": Range(-1, 2),
    "progress_seconds": Range(0, 10**6), "max_image_mb": Range(0, 10**6, low_open=True),
    "max_image_pixels": COUNT,
}


def _check_numbers(config: Config) -> None:
    check_numbers(dataclasses.asdict(config), TRAIN_RANGES)
    if config.pca_sample and config.pca_sample < config.pca_dim:
        raise ConfigError("pca_sample", f"{config.pca_sample} images cannot fit a {config.pca_dim}-dimensional "
                          f"PCA (its whitening would divide by eigenvalues at the floor); use 0 (all) or at "
                          f"least --pca_dim")


def _check_clusters(config: Config) -> None:
    if config.k < 1:
        raise ConfigError("k", f"must be at least 1, got {config.k}")
    if config.super_clusters < 1:
        raise ConfigError("super_clusters", f"must be at least 1, got {config.super_clusters}")
    if config.k % config.super_clusters:
        raise ConfigError("k", f"{config.k} is not divisible by --super_clusters={config.super_clusters}")
    if config.k == 1 and not config.rotation:
        raise ConfigError("k", "1 cluster without --rotation gives every image the same label: nothing to "
                          "learn; use k > 1 or --rotation")


def _check_workdir(workdir: str) -> None:
    """The workdir must be a folder, or creatable in the nearest existing folder above it."""
    if not workdir:
        raise ConfigError("workdir", "is required (the folder for checkpoints, logs and exports)")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError("workdir", f"{workdir} exists and is not a folder")
    parent = os.path.abspath(workdir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError("workdir", f"{parent} is a file, so {workdir} cannot be a folder under it")
    writable = [parent] + [os.path.join(workdir, name) for name in ("checkpoints", "assignments")]
    for folder in writable:
        if os.path.isdir(folder) and not os.access(folder, os.W_OK):
            raise ConfigError("workdir", f"cannot write in {folder}")


def one_of(choices: tuple) -> str:
    """The choices as a --help text says them: 'a, b or c'."""
    names = [str(choice) for choice in choices]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def _check_choice(flag: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(flag, f"unknown value {value!r}; choose one of {', '.join(map(str, allowed))}")


def validate_for_data(config: Config, num_images: int) -> None:
    """Checks the settings that depend on the data set size."""
    if config.k > num_images:
        raise ConfigError("k", f"{config.k} clusters for {num_images} images; k must not exceed the number of images")
    average = hierarchy.images_per_super_cluster(num_images, config.super_clusters)
    if config.super_clusters > 1 and config.sub_classes > average:
        raise ConfigError("k", f"{config.sub_classes} sub-clusters per super-cluster is more than the "
                          f"{average} images a super-cluster holds on average")


def head_batch_warning(config: Config) -> str | None:
    """One line when a step gives each sub-class head fewer than MIN_EXAMPLES_PER_HEAD examples on average
    (the global batch spread over the S super-classes), else None."""
    per_head = config.batch_size / config.super_classes
    if config.sub_classes == 1 or per_head >= MIN_EXAMPLES_PER_HEAD:
        return None
    return (f"--batch_size={config.batch_size} over {config.super_classes} super-classes gives each sub-class "
            f"head {per_head:.3g} examples per step (the paper: 192; below {MIN_EXAMPLES_PER_HEAD} its gradient "
            f"is noisy): raise --batch_size or lower --lr (docs/method.md)")


def check_resumable(config: Config, saved: Config, saved_num_images: int | None, num_images: int | None = None,
                    recorded: frozenset[str] | None = None) -> None:
    """Refuses to resume a workdir whose saved configuration differs in a key setting, or (when
    num_images is given) whose data had another number of readable images: indices would shift."""
    for key in RESUME_KEYS:
        if key == "data" and same_data(saved.data, config.data):
            continue
        if (recorded is None or key in recorded) and getattr(saved, key) != getattr(config, key):
            raise ConfigError(key, f"the workdir {config.workdir} was trained with --{key}={getattr(saved, key)}, "
                              f"not {getattr(config, key)}; use another --workdir or the same setting")
    if None not in (num_images, saved_num_images) and saved_num_images != num_images:
        raise ConfigError("data", f"the workdir {config.workdir} was trained on {saved_num_images} readable "
                          f"images, {config.data} now has {num_images} (files added, removed or damaged); "
                          f"restore the data or use another --workdir")


def same_data(saved: str, given: str) -> bool:
    """Whether two --data values name the same data: the same words, or folder paths that lead to the same
    folder (a trailing slash, a relative path or a link changes nothing)."""
    if saved == given:
        return True
    special = ("digits", "synthetic")
    if saved in special or given in special or saved.startswith("tfds:") or given.startswith("tfds:"):
        return False
    return os.path.realpath(saved) == os.path.realpath(given)


def changed_settings(config: Config, saved: Config, recorded: frozenset[str] | None = None) -> dict[str, list]:
    """{flag: [saved value, new value]} of the settings a resumed run changes (those outside RESUME_KEYS,
    which check_resumable refuses to change); settings the saved file does not record are left out."""
    return {field.name: [getattr(saved, field.name), getattr(config, field.name)]
            for field in dataclasses.fields(Config)
            if field.name not in RESUME_KEYS + NOT_SETTINGS and (recorded is None or field.name in recorded)
            and getattr(saved, field.name) != getattr(config, field.name)}
