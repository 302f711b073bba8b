"""The reference's released VGG-16-BN checkpoints (PyTorch) as this project's `vgg16_bn` backbone.

DeeperCluster's `ours.pth`, DeepCluster-YFCC and RotNet-YFCC (docs/method.md, "Released models") hold
a state dict under `state_dict` with keys `module.sobel.{0,1}.*` (grey and Sobel, when trained with
Sobel), `module.body.features.<i>.*` (Conv2d, BatchNorm2d, ReLU and MaxPool2d in that order) and
`module.body.classifier.{0,3}.*` (fc6, fc7). Each maps one to one onto a layer of
`backbones.build_backbone("vgg16_bn", ...)`, whose input stage (ImageNet normalisation, zero padding
1, or 2 with Sobel) is the reference's. torch is needed only to read the file (`weights_only=True`:
tensors and plain containers, no arbitrary unpickling).
"""

from __future__ import annotations

import math

import numpy as np

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

from keras_dc import backbones

# The reference's fc6 sees 512 x side x side values, side = image_size / 32 (7 at 224).
_DOWNSAMPLING = 32
_LAST_CHANNELS = 512
_FC_INDEX = {"fc6": 0, "fc7": 3}  # positions in the reference's classifier (Linear, ReLU, Dropout, Linear)
_IGNORED_PREFIXES = ("pred_layer.", "top_layer.")  # the training heads
LICENSE = "CC BY-NC 4.0 (Attribution-NonCommercial), the license of the reference's released models"


class ReferenceWeightsError(ValueError):
    """The checkpoint is not a reference VGG-16-BN (missing or misshapen weights, or unreadable)."""


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
    """The checkpoint's weights as numpy arrays, under keys without DDP's `module.` and the `body.` prefix."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises pickle, zip and runtime errors alike
        raise ReferenceWeightsError(f"{path} is not a PyTorch checkpoint of tensors and plain containers "
                                    f"(torch.load(weights_only=True) failed: {type(error).__name__})") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ReferenceWeightsError(f"{path} holds no state dict of tensors")
    return {_plain_key(key): value.detach().float().numpy() for key, value in state.items()}


def _plain_key(key: str) -> str:
    """`module.body.features.0.weight` -> `features.0.weight` (also `features.module.0...` of DataParallel)."""
    key = key.replace(".module.", ".")
    for prefix in ("module.", "body."):
        key = key.removeprefix(prefix)
    return key


def has_sobel(state: dict[str, np.ndarray]) -> bool:
    """Whether the checkpoint holds the grey and Sobel layers (trained with Sobel input)."""
    return "sobel.0.weight" in state


def convert(state: dict[str, np.ndarray], sobel: bool | None = None) -> keras.Model:
    """This project's vgg16_bn backbone with the checkpoint's weights.

    `sobel=None` takes it from the checkpoint; True gives the reference's fixed grey + Sobel layers to a
    checkpoint that does not store them. The image size is the one the checkpoint's fc6 was trained at.
    Raises ReferenceWeightsError for a missing, misshapen or unexpected weight.
    """
    sobel = has_sobel(state) if sobel is None else sobel
    if has_sobel(state) and not sobel:
        raise ReferenceWeightsError("the checkpoint was trained with Sobel input; it cannot be used without")
    image_size = _image_size(state)
    model = backbones.build_backbone("vgg16_bn", image_size, sobel=sobel, name="vgg16_bn_reference")
    weights = _Weights(state)
    if has_sobel(state):
        weights.assign(model.get_layer("grey"), [weights.conv_kernel("sobel.0"), weights.take("sobel.0.bias")])
        weights.assign(model.get_layer("sobel"), [weights.conv_kernel("sobel.1"), weights.take("sobel.1.bias")])
    for position, (block, unit) in _feature_positions(model):
        conv, bn = f"features.{position}", f"features.{position + 1}"
        weights.assign(model.get_layer(f"block{block}_conv{unit}"),
                       [weights.conv_kernel(conv), weights.take(f"{conv}.bias")])
        weights.assign(model.get_layer(f"block{block}_bn{unit}"),
                       [weights.take(f"{bn}.{name}") for name in ("weight", "bias", "running_mean", "running_var")])
    side = image_size // _DOWNSAMPLING
    fc6 = weights.take("classifier.0.weight")
    # torch flattens (channels, rows, columns), Keras (rows, columns, channels).
    fc6 = fc6.reshape(-1, _LAST_CHANNELS, side, side).transpose(2, 3, 1, 0).reshape(-1, fc6.shape[0])
    weights.assign(model.get_layer("fc6"), [fc6, weights.take("classifier.0.bias")])
    weights.assign(model.get_layer("fc7"), [weights.take("classifier.3.weight").T, weights.take("classifier.3.bias")])
    weights.check_all_used()
    return model


def _image_size(state: dict[str, np.ndarray]) -> int:
    """The input side the checkpoint's fc6 was built for: 32 x side for 512 x side x side inputs (224 for 7)."""
    if "classifier.0.weight" not in state:
        raise ReferenceWeightsError("no fc6 (classifier.0.weight): not a reference VGG-16-BN checkpoint")
    inputs = state["classifier.0.weight"].shape[1]
    side = math.isqrt(inputs // _LAST_CHANNELS)
    if side < 1 or _LAST_CHANNELS * side * side != inputs:
        raise ReferenceWeightsError(f"fc6 takes {inputs} inputs, not 512 x side x side: not a VGG-16-BN")
    return _DOWNSAMPLING * side


def _feature_positions(model: keras.Model) -> list[tuple[int, tuple[int, int]]]:
    """(index of the conv in the reference's `features`, (block, unit)) for every conv unit in order.

    `features` holds Conv2d, BatchNorm2d, ReLU per conv and one MaxPool2d after each block.
    """
    positions, position, previous_block = [], 0, 1
    for name in backbones.conv_tap_layers(model, "all"):
        block, unit = (int(part) for part in name.removeprefix("block").split("_relu"))
        position += block != previous_block  # the block's max-pool
        positions.append((position, (block, unit)))
        position, previous_block = position + 3, block
    return positions


class _Weights:
    """The checkpoint's arrays, handed out by key and checked against the layers they go to."""

    def __init__(self, state: dict[str, np.ndarray]):
        self.state = state
        self.used: set[str] = set()

    def take(self, key: str) -> np.ndarray:
        if key not in self.state:
            raise ReferenceWeightsError(f"the checkpoint has no {key}: not a reference VGG-16-BN")
        self.used.add(key)
        return self.state[key]

    def conv_kernel(self, prefix: str) -> np.ndarray:
        """A torch conv weight (out, in, rows, columns) as a Keras kernel (rows, columns, in, out)."""
        return self.take(f"{prefix}.weight").transpose(2, 3, 1, 0)

    @staticmethod
    def assign(layer: keras.layers.Layer, arrays: list[np.ndarray]) -> None:
        expected = [tuple(weight.shape) for weight in layer.weights]
        if [array.shape for array in arrays] != expected:
            raise ReferenceWeightsError(f"{layer.name}: the checkpoint's weights have shapes "
                                        f"{[array.shape for array in arrays]}, the layer {expected}")
        layer.set_weights(arrays)

    def check_all_used(self) -> None:
        """Refuses weights that went nowhere (another architecture), except BN counters and training heads."""
        left = sorted(key for key in set(self.state) - self.used
                      if not key.endswith("num_batches_tracked") and not key.startswith(_IGNORED_PREFIXES))
        if left:
            raise ReferenceWeightsError(f"{len(left)} weights of the checkpoint have no place in a VGG-16-BN, "
                                        f"first {left[0]}")


def description(checkpoint: str, model: keras.Model, sobel: bool) -> dict:
    """What backbone.json says about an imported model."""
    return {"arch": "vgg16_bn", "image_size": int(model.input_shape[1]), "sobel": sobel,
            "input": "RGB float32 in [0, 255], shape (image_size, image_size, 3)",
            "output": "features before the final ReLU (fc7)", "imported_from": checkpoint, "license": LICENSE}
