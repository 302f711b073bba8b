"""What the evaluation tools read: the backbone (a workdir's export, a .keras file or a random init) and
labelled data. Errors are ConfigErrors naming the tool's flag, as the tools print them."""

from __future__ import annotations

import os

from keras_dc.config import Config, ConfigError, errors_as_flags


def check_one_backbone(workdir: str, backbone: str, random_init: bool) -> None:
    """Exactly one of --workdir, --backbone and --random_init says where the network comes from."""
    if sum([bool(workdir), bool(backbone), random_init]) != 1:
        raise ConfigError("workdir", "give exactly one of --workdir, --backbone and --random_init")


def load_backbone(workdir: str, backbone: str, random_init: bool, arch: str, image_size: int, sobel: bool,
                  seed: int):
    """The network (a keras.Model from RGB in [0, 255] to features) and a line saying where it came from."""
    import keras_dc.layers  # noqa: F401  (registers the custom layers for loading)
    import keras

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
        return keras.models.load_model(backbone), backbone
    with errors_as_flags({workdir_lib.WorkdirError: "workdir"}):
        path = workdir_lib.existing_backbone(workdir)
    return keras.models.load_model(path), path


def load_labelled(flag: str, spec: str, image_size: int, trained: Config | None, tfds_data_dir: str,
                  synthetic_size: int, seed: int):
    """A labelled ImageSource; the workdir's own data spec (`trained.data`) is read with the workdir's settings."""
    from keras_dc.sources import DataDirError, SourceError, load_source

    if trained is not None and spec == trained.data:
        tfds_data_dir, synthetic_size, seed = trained.tfds_data_dir, trained.synthetic_size, trained.seed
    with errors_as_flags({DataDirError: "tfds_data_dir", SourceError: flag}):
        source = load_source(spec, image_size, tfds_data_dir, synthetic_size, seed)
    if source.labels is None:
        raise ConfigError(flag, f"{source.description} has no labels; this tool needs labelled images")
    return source
