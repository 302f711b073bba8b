"""Convnet bodies (small, AlexNet, VGG-16-BN, ResNet-50) that map raw RGB images to features.

Every model takes float32 RGB in [0, 255] (input "image"), normalises it with
ImageNet statistics, zero-pads it as the reference does, optionally applies grey +
Sobel, and outputs fc7 before its ReLU: the feature DeeperCluster clusters
(docs/method.md, "One cycle", step 1). ResNet-50 (Keras's own `keras.applications`
layers, no weights) outputs its global-average-pooled 2048-d features instead.

Naming (other tools rely on it): conv units are `block{b}_conv{c}`,
`block{b}_bn{c}`, `block{b}_relu{c}`; `block{b}_pool` follows each block; the
head is `flatten`, `fc6`, `fc6_relu`, `fc6_dropout`, `fc7`. AlexNet groups its
five convs by pooling stage: block1_conv1, block2_conv1, block3_conv1..3.
ResNet-50 keeps Keras's names: residual blocks end in `conv{stage}_block{b}_out`
(stages 2..5), and the pooled features are `avg_pool`.

Initialisation follows the reference: convs are He-normal with fan_out
(normal(0, sqrt(2 / (k * k * out_channels))), not truncated) and zero bias;
dense kernels use torch's default nn.Linear scheme (uniform, variance
1 / (3 * fan_in)) with zero bias; BN uses torch's momentum (0.1) and epsilon.
ResNet-50's convs and batch norms are set the same way (torchvision's ResNet uses
the same He-normal fan_out init).
"""

import re

import numpy as np

import keras_dc  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
import keras
from keras import layers

from keras_dc.config import ARCHITECTURES  # defined there, so that the tools' --help needs no keras
from keras_dc.layers import normalized_input, padded_input

# Smallest input side for which every (floor-mode) pooling still has a window
# (ResNet-50: the smallest keras.applications accepts, 1x1 after the last stage).
MIN_IMAGE_SIZE = {"small": 6, "alexnet": 63, "vgg16_bn": 30, "resnet50": 32}
FEATURE_DIM = {"small": 256, "alexnet": 4096, "vgg16_bn": 4096, "resnet50": 2048}
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
# ResNet-50 pads its own conv1 (Keras's conv1_pad), so only Sobel adds a pixel.
_INPUT_PADDING = {"small": 1, "alexnet": 0, "vgg16_bn": 1, "resnet50": 0}
_BN_MOMENTUM = 0.9  # keras convention; torch's momentum=0.1
_BN_EPSILON = 1e-5
_DROPOUT_RATE = 0.5
# Probe taps: (block, unit) from a VGG/AlexNet post-ReLU conv, or (stage, block) from a ResNet block's output.
_TAP_NAMES = (re.compile(r"^block(\d+)_relu(\d+)$"), re.compile(r"^conv(\d+)_block(\d+)_out$"))


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

    The output is fc7 before its ReLU (ResNet-50: the pooled features), float32; the same seed
    gives the same weights.
    """
    validate_architecture(arch, image_size)
    seeds = _SeedStream(seed)
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    x = _input_stage(inputs, _INPUT_PADDING[arch], sobel)
    if arch == "resnet50":
        features = _resnet50_body(x, seeds, sync_batchnorm)
    elif arch == "alexnet":
        x = _alexnet_body(x, seeds, sync_batchnorm)
        features = _fc_head(x, FEATURE_DIM[arch], seeds, input_dropout=True)
    else:
        x = _vgg_body(x, _VGG_BLOCKS[arch], seeds, sync_batchnorm)
        features = _fc_head(x, FEATURE_DIM[arch], seeds, input_dropout=False)
    default_name = f"{arch}_sobel" if sobel else arch
    return keras.Model(inputs, features, name=name or default_name)


def conv_tap_layers(model: keras.Model, which: str = "block_last") -> list[str]:
    """Names of the post-ReLU conv layers (ResNet: residual block outputs) of a backbone, in network order.

    `which="all"` lists every conv unit; `"block_last"` only the last one of each block (ResNet: stage).
    """
    if which not in TAP_CHOICES:
        raise ValueError(f"Unknown tap choice {which!r}; expected one of {TAP_CHOICES}.")
    taps = sorted(
        (int(match[1]), int(match[2]), layer.name)
        for layer in model.layers
        for pattern in _TAP_NAMES
        if (match := pattern.match(layer.name))
    )
    if which == "all":
        return [layer_name for _, _, layer_name in taps]
    last_of_block = {block: layer_name for block, _, layer_name in taps}
    return list(last_of_block.values())


def _input_stage(inputs, arch_padding: int, sobel: bool):
    """The ImageNet normalisation, then the reference's padding and optional grey + Sobel."""
    return padded_input(normalized_input(inputs), arch_padding, sobel)


def _he_normal(seeds):
    """The reference's conv init: normal(0, sqrt(2 / (k * k * out_channels))), not truncated."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal", seed=seeds()
    )


def _conv_unit(x, filters, kernel_size, strides, padding, block, conv, seeds, sync_batchnorm):
    """Conv2D -> BatchNormalization -> ReLU, named block{block}_{conv,bn,relu}{conv}."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        kernel_initializer=_he_normal(seeds),
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


def _resnet50_body(x, seeds, sync_batchnorm):
    """Keras's ResNet-50 layers (no weights) on `x`, global-average-pooled, with this module's init and BN.

    Built on the input stage's tensor, so its layers (and probe taps) are the backbone's own, not a
    nested model's.
    """
    body = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=x, pooling="avg")
    for layer in body.layers:
        if isinstance(layer, layers.Conv2D) and layer.name not in ("grey", "sobel"):
            layer.kernel.assign(_he_normal(seeds)(layer.kernel.shape))
            layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
        elif isinstance(layer, layers.BatchNormalization):
            layer.momentum, layer.epsilon, layer.synchronized = _BN_MOMENTUM, _BN_EPSILON, sync_batchnorm
    return layers.Activation("linear", dtype="float32", name="pooled_features")(body.output)


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
