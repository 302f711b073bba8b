"""Fixed input layers: ImageNet normalisation, then zero padding and grey + Sobel.

Every stage is a built-in Keras layer with fixed settings (Rescaling, ZeroPadding2D and
non-trainable Conv2Ds), so a `.keras` file holding them loads with `keras.saving.load_model`
alone, in safe mode, in a Python that cannot import keras_dc. Images are channels-last.
"""

from collections.abc import Sequence

import numpy as np

import keras_dc  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
import keras

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Sobel kernels of the reference (DeeperCluster `create_sobel_layer`), indexed
# [row, column] and applied as cross-correlation, like torch and keras convs.
SOBEL_KERNELS = (
    ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0)),
    ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0)),
)


def normalized_input(x, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """Maps RGB in [0, 255] to (x / 255 - mean) / std per channel, so models take raw pixels.

    Computed as (x * (1 / 255) - mean) * (1 / std) with float32 reciprocals, by three built-in
    Rescaling layers: this is what TensorFlow's graph optimiser made of the formula in the
    custom layer of earlier exports (divisions by constants become multiplications by their
    reciprocals), so features and training are bit-identical to theirs.
    """
    if len(mean) != len(std):
        raise ValueError(f"mean and std must have the same length, got {mean} and {std}")
    one = np.float32(1.0)
    x = keras.layers.Rescaling(float(one / np.float32(255.0)), name="normalize_scale")(x)
    x = keras.layers.Rescaling(1.0, [-float(m) for m in mean], name="normalize_center")(x)
    return keras.layers.Rescaling([float(one / np.float32(s)) for s in std], name="normalize")(x)


def padded_input(x, arch_padding: int, sobel: bool):
    """The reference's input stage (docs/method.md): zero padding, then grey and Sobel as fixed convs.

    The padding is `arch_padding` pixels, one more with Sobel, whose 3x3 filters are 'valid'
    convolutions (so they see the same zeros as torch's padding). Grey is the mean of R, G, B.
    Built-in, non-trainable Conv2D layers with zero biases, so that the reference's
    `sobel.{0,1}.{weight,bias}` map onto `grey` and `sobel` one to one.
    """
    padding = arch_padding + int(sobel)
    if padding:
        x = keras.layers.ZeroPadding2D(padding, name="input_pad")(x)
    if not sobel:
        return x
    grey = keras.layers.Conv2D(1, 1, trainable=False, name="grey")
    sobel_conv = keras.layers.Conv2D(len(SOBEL_KERNELS), 3, padding="valid", trainable=False, name="sobel")
    x = sobel_conv(grey(x))
    grey.set_weights([np.full((1, 1, 3, 1), 1.0 / 3.0, np.float32), np.zeros(1, np.float32)])
    # (rows, cols, in=1, out=2), the layout of a Keras Conv2D kernel.
    kernel = np.asarray(SOBEL_KERNELS, np.float32).transpose(1, 2, 0)[:, :, None, :]
    sobel_conv.set_weights([kernel, np.zeros(len(SOBEL_KERNELS), np.float32)])
    return x
