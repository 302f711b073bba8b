"""Fixed input layers: ImageNet normalisation, then zero padding and grey + Sobel.

ImageNormalization is a registered Keras serialisable, so a `.keras` file loads with
`import keras_dc.layers` and `keras.models.load_model` in safe mode; the padding, grey
and Sobel stages are built-in Keras layers with fixed weights. Images are channels-last.
"""

from collections.abc import Sequence

import numpy as np

import keras_dc  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
import keras
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Sobel kernels of the reference (DeeperCluster `create_sobel_layer`), indexed
# [row, column] and applied as cross-correlation, like torch and keras convs.
SOBEL_KERNELS = (
    ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0)),
    ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0)),
)


@keras.saving.register_keras_serializable(package="keras_dc")
class ImageNormalization(keras.layers.Layer):
    """Map RGB in [0, 255] to (x / 255 - mean) / std, per channel.

    Puts the normalisation inside the model so exported models take raw pixels.
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        **kwargs,
    ):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have the same length, got {mean} and {std}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def call(self, inputs):
        mean = ops.convert_to_tensor(np.asarray(self.mean), dtype=inputs.dtype)
        std = ops.convert_to_tensor(np.asarray(self.std), dtype=inputs.dtype)
        return (inputs / 255.0 - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mean": list(self.mean), "std": list(self.std)}


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
