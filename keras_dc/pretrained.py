"""--pretrained: a run's body starts from trained weights (the reference's main.py `--pretrained`,
"use this instead of random weights"); the heads start fresh and the first clustering already sees
the pretrained features.

The weights come from a keras-dc `backbone.keras`, a workdir (its exported backbone) or a reference
PyTorch checkpoint (through keras_dc.reference_weights). Every layer's weights are copied, BN
statistics included; a network of another architecture, image size or input stage is refused.
"""

from __future__ import annotations

import os

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

from keras_dc import workdir as workdir_lib
from keras_dc.config import ConfigError

FLAG = "pretrained"


def check_path(path: str) -> None:
    """Refuses, before any work, a --pretrained that is neither a file nor a workdir with an exported backbone."""
    if os.path.isdir(path):
        try:
            workdir_lib.existing_backbone(path)
        except workdir_lib.WorkdirError as error:
            raise ConfigError(FLAG, str(error)) from None
    elif not os.path.isfile(path):
        raise ConfigError(FLAG, f"{path} does not exist (give a backbone.keras, a workdir or a reference .pth)")


def stored_network(path: str, sobel: bool) -> keras.Model:
    """The network at `path`: a workdir's backbone.keras, a .keras file, or a reference checkpoint imported
    with (`sobel`) or without the grey + Sobel input stage."""
    from keras_dc.reference_weights import ReferenceWeightsError, convert, read_checkpoint

    check_path(path)
    if os.path.isdir(path):
        path = workdir_lib.backbone_path(path)
    if path.endswith(".keras"):
        return workdir_lib.load_backbone(path)
    try:
        import torch  # noqa: F401  (only to say clearly that it is missing)
    except ImportError:
        raise ConfigError(FLAG, f"{path} is not a .keras file; reading a PyTorch checkpoint needs torch: "
                          "pip install torch") from None
    try:
        return convert(read_checkpoint(path), sobel=sobel)
    except ReferenceWeightsError as error:
        raise ConfigError(FLAG, f"{path}: {error}") from None


def weight_layers(model: keras.Model) -> dict[str, list[tuple[int, ...]]]:
    """{layer name: its weights' shapes} of every layer with weights, in network order."""
    return {layer.name: [tuple(weight.shape) for weight in layer.weights] for layer in model.layers if layer.weights}


def mismatch(stored: keras.Model, target: keras.Model) -> str | None:
    """Why `stored`'s weights do not fit `target` (a missing or misshapen layer, or another input), or None."""
    ours, theirs = weight_layers(target), weight_layers(stored)
    if stored.input_shape[1:] != target.input_shape[1:]:
        return f"its input is {stored.input_shape[1:]}, this run's {target.input_shape[1:]} (--image_size)"
    if ("sobel" in ours) != ("sobel" in theirs):
        return (f"it was built {'with' if 'sobel' in theirs else 'without'} Sobel input, this run "
                f"{'with' if 'sobel' in ours else 'without'} (--sobel)")
    for name in list(ours) + [name for name in theirs if name not in ours]:
        if ours.get(name) != theirs.get(name):
            return (f"its layer {name} has weights {theirs.get(name, 'absent')}, this run's "
                    f"{ours.get(name, 'absent')} (another --arch)")
    return None


def load_into(backbone: keras.Model, path: str, arch: str, sobel: bool) -> None:
    """Copies the body at `path` into `backbone` (built for --arch `arch`, --sobel `sobel`); a ConfigError
    naming --pretrained, in one line, when it does not fit."""
    stored = stored_network(path, sobel)
    problem = mismatch(stored, backbone)
    if problem:
        raise ConfigError(FLAG, f"{path} does not fit --arch={arch}: {problem}")
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights(stored.get_layer(layer.name).get_weights())
