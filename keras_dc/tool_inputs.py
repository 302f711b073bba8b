"""What the evaluation tools read: the backbone (a workdir's export, a .keras file or a random init) and
labelled data. Errors are ConfigErrors naming the tool's flag, as the tools print them."""

from __future__ import annotations

import os

from keras_dc.config import (ARCHITECTURES, COUNT, IMAGE_SIDE, Config, ConfigError, Range, errors_as_flags, one_of,
                             same_data)

# The numeric flags of define_flags and the values they accept (config.check_numbers).
RANGES = {"image_size": IMAGE_SIDE, "val_fraction": Range(0, 1, low_open=True, high_open=True), "synthetic_size": COUNT,
          "progress_seconds": Range(0, 10**6)}


def define_flags(flags, verb: str) -> None:
    """Declares the flags that choose the backbone and the labelled data, the same in every evaluation
    tool; `flags` is absl.flags, `verb` what the tool does to the backbone ("probes", "fine-tunes")."""
    flags.DEFINE_string("workdir", "", f"A training workdir: {verb} its backbone.keras on its data by default.")
    flags.DEFINE_string("backbone", "", "An exported backbone (.keras), instead of --workdir.")
    flags.DEFINE_bool("random_init", False, "Use a randomly initialised --arch (the baseline).")
    flags.DEFINE_string("arch", "small", f"Backbone of --random_init: {one_of(ARCHITECTURES)}.")
    flags.DEFINE_integer("image_size", 32, "Input side of --random_init.")
    flags.DEFINE_bool("sobel", False, "Grey + Sobel input layers for --random_init.")
    flags.DEFINE_string("train_data", "", "Labelled training set (syntax of train.py's --data); "
                        "default: the workdir's training data.")
    flags.DEFINE_string("val_data", "", "Labelled validation set; default: hold out --val_fraction of --train_data.")
    flags.DEFINE_float("val_fraction", 0.2, "Stratified held-out fraction when there is no --val_data.")
    flags.DEFINE_string("tfds_data_dir", "", "Folder where TFDS data sets were prepared.")
    flags.DEFINE_integer("synthetic_size", 512, "Images of --train_data/--val_data=synthetic.")
    flags.DEFINE_float("progress_seconds", 10.0, "Seconds between two progress lines of the feature passes and "
                       "training when the output is not a terminal (a shorter pass prints none).")


def check_inputs(workdir: str, backbone: str, random_init: bool, val_fraction: float) -> None:
    """Exactly one of --workdir, --backbone and --random_init says where the network comes from (the numbers,
    --val_fraction among them, are the tool's RANGES)."""
    if sum([bool(workdir), bool(backbone), random_init]) != 1:
        raise ConfigError("workdir", "give exactly one of --workdir, --backbone and --random_init")


def load_backbone(workdir: str, backbone: str, random_init: bool, arch: str, image_size: int, sobel: bool,
                  seed: int):
    """The network (a keras.Model from RGB in [0, 255] to features) and a line saying where it came from."""
    from keras_dc import backbones, workdir as workdir_lib

    if random_init:
        try:
            backbones.validate_architecture(arch, image_size)
        except ValueError as error:
            raise ConfigError("arch" if arch not in backbones.ARCHITECTURES else "image_size", str(error)) from None
        model = backbones.build_backbone(arch, image_size, sobel=sobel, seed=seed)
        return model, f"random init {arch} (image_size {image_size}, sobel {sobel}, seed {seed})"
    if backbone:
        if not os.path.isfile(backbone):
            raise ConfigError("backbone", f"{backbone} does not exist")
        return workdir_lib.load_backbone(backbone), backbone
    with errors_as_flags({workdir_lib.WorkdirError: "workdir"}):
        path = workdir_lib.existing_backbone(workdir)
    return workdir_lib.load_backbone(path), path


def load_labelled(flag: str, spec: str, image_size: int, trained: Config | None, tfds_data_dir: str,
                  synthetic_size: int, seed: int, workdir: str = ""):
    """A labelled ImageSource; the workdir's own data spec (`trained.data`) is read with the workdir's
    settings and its recorded file list, so images keep the indices its clusters use."""
    from keras_dc.sources import DataDirError, SourceError, load_source
    from keras_dc.workdir import WorkdirError, data_index

    same = trained is not None and same_data(trained.data, spec)
    if same:
        tfds_data_dir, synthetic_size, seed = trained.tfds_data_dir, trained.synthetic_size, trained.seed
    with errors_as_flags({DataDirError: "tfds_data_dir", SourceError: flag, WorkdirError: "workdir"}):
        index = data_index(workdir) if same and workdir else None
        source = load_source(spec, image_size, tfds_data_dir, synthetic_size, seed, index=index)
    if source.labels is None:
        raise ConfigError(flag, f"{source.description} has no labels; this tool needs labelled images")
    return source


def trained_config(workdir: str) -> Config | None:
    """The Config the workdir was trained with, or None without one."""
    from keras_dc import workdir as workdir_lib

    with errors_as_flags({workdir_lib.WorkdirError: "workdir"}):
        return workdir_lib.read_run(workdir).config if workdir else None


def load_train_val(train_data: str, val_data: str, image_size: int, trained: Config | None, tfds_data_dir: str,
                   synthetic_size: int, seed: int, workdir: str = ""):
    """The labelled training set (default: the workdir's own data) and the validation set, or None without
    `val_data`; validation classes are numbered as training's, matched by name (sources.labelled_like)."""
    from keras_dc.sources import SourceError, labelled_like

    def load(flag: str, spec: str):
        return load_labelled(flag, spec, image_size, trained, tfds_data_dir, synthetic_size, seed, workdir)

    train_spec = train_data or (trained.data if trained else "")
    if not train_spec:
        raise ConfigError("train_data", "is required with --backbone or --random_init")
    train = load("train_data", train_spec)
    if not val_data:
        return train, None
    val = load("val_data", val_data)
    with errors_as_flags({SourceError: "val_data"}):
        return train, labelled_like(val, train)
