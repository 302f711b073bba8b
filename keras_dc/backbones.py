"""Convnet bodies (small, AlexNet, VGG-16-BN) that map raw RGB images to features.

Every model takes float32 RGB in [0, 255] (input "image"), normalises it with
ImageNet statistics, zero-pads it as the reference does, optionally applies grey +
Sobel, and outputs fc7 before its ReLU: the feature DeeperCluster clusters
(docs/method.md, "One cycle", step 1).

Naming (other tools rely on it): conv units are `block{b}_conv{c}`,
`block{b}_bn{c}`, `block{b}_relu{c}`; `block{b}_pool` follows each block; the
head is `flatten`, `fc6`, `fc6_relu`, `fc6_dropout`, `fc7`. AlexNet groups its
five convs by pooling stage: block1_conv1, block2_conv1, block3_conv1..3.

Initialisation follows the reference: convs are He-normal with fan_out
(normal(0, sqrt(2 / (k * k * out_channels))), not truncated) and zero bias;
dense kernels use torch's default nn.Linear scheme (uniform, variance
1 / (3 * fan_in)) with zero bias; BN uses torch's momentum (0.1) and epsilon.
"""

import re

import numpy as np

import keras_dc  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
import keras
from keras import layers

from keras_dc.layers import normalized_input, padded_input

ARCHITECTURES = ("small", "alexnet", "vgg16_bn")
# Smallest input side for which every (floor-mode) pooling still has a window.
MIN_IMAGE_SIZE = {"small": 6, "alexnet": 63, "vgg16_bn": 30}
FEATURE_DIM = {"small": 256, "alexnet": 4096, "vgg16_bn": 4096}
TAP_CHOICES = ("block_last", "all")

# Conv widths per block; a 2x2 stride-2 max-pool follows each block.
_VGG_BLOCKS = {
    "small": ((32,), (64,), (128, 128)),
    "vgg16_bn": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
}
# DeepCluster's AlexNet: (filters, kernel, stride) per conv, grouped by pooling stage.
_ALEXNET_BLOCKS = (((96, 11, 4),), ((256, 5, 1),), ((384, 3, 1), (384, 3, 1), (256, 3, 1)))
_ALEXNET_CONV1_PADDING = 2
# Zero padding of the (normalised) input before the body, one more pixel with Sobel: the
# reference's VGG-16 pads by 1 (2 with Sobel); DeepCluster's AlexNet only pads for Sobel.
_INPUT_PADDING = {"small": 1, "alexnet": 0, "vgg16_bn": 1}
_BN_MOMENTUM = 0.9  # keras convention; torch's momentum=0.1
_BN_EPSILON = 1e-5
_DROPOUT_RATE = 0.5
_RELU_NAME = re.compile(r"^block(\d+)_relu(\d+)$")


class _SeedStream:
    """Deterministic stream of per-layer seeds derived from one build seed."""

    def __init__(self, seed: int):
        self._rng = np.random.default_rng(seed)

    def __call__(self) -> int:
        return int(self._rng.integers(0, 2**31 - 1))


def validate_architecture(arch: str, image_size: int) -> None:
    """Raise ValueError unless `arch` is known and `image_size` is large enough for it."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {arch!r}; expected one of {ARCHITECTURES}.")
    if image_size < MIN_IMAGE_SIZE[arch]:
        raise ValueError(
            f"image_size {image_size} is too small for {arch!r}; "
            f"the minimum is {MIN_IMAGE_SIZE[arch]}."
        )


def build_backbone(
    arch: str,
    image_size: int,
    sobel: bool = False,
    sync_batchnorm: bool = False,
    seed: int = 0,
    name: str | None = None,
) -> keras.Model:
    """Build the functional feature extractor `arch` for square RGB images of side `image_size`.

    The output is fc7 before its ReLU (float32); the same seed gives the same weights.
    """
    validate_architecture(arch, image_size)
    seeds = _SeedStream(seed)
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    x = normalized_input(inputs)
    x = padded_input(x, _INPUT_PADDING[arch], sobel)
    if arch == "alexnet":
        x = _alexnet_body(x, seeds, sync_batchnorm)
    else:
        x = _vgg_body(x, _VGG_BLOCKS[arch], seeds, sync_batchnorm)
    features = _fc_head(x, FEATURE_DIM[arch], seeds, input_dropout=arch == "alexnet")
    default_name = f"{arch}_sobel" if sobel else arch
    return keras.Model(inputs, features, name=name or default_name)


def conv_tap_layers(model: keras.Model, which: str = "block_last") -> list[str]:
    """Names of the post-ReLU conv layers of a backbone, in network order.

    `which="all"` lists every conv unit; `"block_last"` only the last one of each block.
    """
    if which not in TAP_CHOICES:
        raise ValueError(f"Unknown tap choice {which!r}; expected one of {TAP_CHOICES}.")
    taps = sorted(
        (int(match[1]), int(match[2]), layer.name)
        for layer in model.layers
        if (match := _RELU_NAME.match(layer.name))
    )
    if which == "all":
        return [layer_name for _, _, layer_name in taps]
    last_of_block = {block: layer_name for block, _, layer_name in taps}
    return list(last_of_block.values())


def _conv_unit(x, filters, kernel_size, strides, padding, block, conv, seeds, sync_batchnorm):
    """Conv2D -> BatchNormalization -> ReLU, named block{block}_{conv,bn,relu}{conv}."""
    init = keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal", seed=seeds()
    )
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        kernel_initializer=init,
        bias_initializer="zeros",
        name=f"block{block}_conv{conv}",
    )(x)
    x = layers.BatchNormalization(
        momentum=_BN_MOMENTUM,
        epsilon=_BN_EPSILON,
        synchronized=sync_batchnorm,
        name=f"block{block}_bn{conv}",
    )(x)
    return layers.ReLU(name=f"block{block}_relu{conv}")(x)


def _vgg_body(x, blocks, seeds, sync_batchnorm):
    """3x3 'same' conv units per block, each block followed by a 2x2 max-pool."""
    for block, widths in enumerate(blocks, start=1):
        for conv, filters in enumerate(widths, start=1):
            x = _conv_unit(x, filters, 3, 1, "same", block, conv, seeds, sync_batchnorm)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return x


def _alexnet_body(x, seeds, sync_batchnorm):
    """DeepCluster's AlexNet convs (conv1 padded by 2, the rest 'same'), 3/2 max-pools."""
    x = layers.ZeroPadding2D(_ALEXNET_CONV1_PADDING, name="block1_pad1")(x)
    for block, convs in enumerate(_ALEXNET_BLOCKS, start=1):
        for conv, (filters, kernel, strides) in enumerate(convs, start=1):
            padding = "valid" if (block, conv) == (1, 1) else "same"
            x = _conv_unit(x, filters, kernel, strides, padding, block, conv, seeds, sync_batchnorm)
        x = layers.MaxPooling2D(3, strides=2, name=f"block{block}_pool")(x)
    return x


def _fc_head(x, units, seeds, input_dropout):
    """Flatten -> [dropout] -> fc6 -> ReLU -> dropout -> fc7 (pre-ReLU, float32)."""
    x = layers.Flatten(name="flatten")(x)
    if input_dropout:
        x = layers.Dropout(_DROPOUT_RATE, seed=seeds(), name="fc6_input_dropout")(x)
    x = _dense(units, seeds, "fc6")(x)
    x = layers.ReLU(name="fc6_relu")(x)
    x = layers.Dropout(_DROPOUT_RATE, seed=seeds(), name="fc6_dropout")(x)
    return _dense(units, seeds, "fc7", dtype="float32")(x)


def _dense(units, seeds, name, dtype=None):
    """Dense layer with torch's default nn.Linear kernel scale and a zero bias."""
    init = keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform", seed=seeds()
    )
    return layers.Dense(
        units, kernel_initializer=init, bias_initializer="zeros", dtype=dtype, name=name
    )
