"""Fixed (weight-free) input layers: ImageNet normalisation and grey + Sobel.

Both are registered Keras serialisables, so a `.keras` file that contains them
loads with `import keras_dc.layers` and `keras.models.load_model` in safe mode.
Images are channels-last.
"""

from collections.abc import Sequence

import numpy as np

import keras_dc  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
import keras
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
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


@keras.saving.register_keras_serializable(package="keras_dc")
class GreySobel(keras.layers.Layer):
    """RGB to grey (fixed channel weights), then two fixed 3x3 Sobel filters.

    Output channel 0 responds to horizontal intensity changes (vertical edges),
    channel 1 to vertical changes; 'same' zero padding keeps the spatial size.
    The filters are cross-correlations with `SOBEL_KERNELS`, as in the reference.
    """

    def __init__(self, grey_weights: Sequence[float] = LUMA_WEIGHTS, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if len(grey_weights) != 3:
            raise ValueError(f"grey_weights must have 3 entries (R, G, B), got {grey_weights}")
        self.grey_weights = tuple(float(w) for w in grey_weights)

    def call(self, inputs):
        weights = ops.convert_to_tensor(np.asarray(self.grey_weights), dtype=inputs.dtype)
        grey = ops.sum(inputs * weights, axis=-1, keepdims=True)
        # (rows, cols, in=1, out=2), the layout keras.ops.conv expects.
        kernel = np.asarray(SOBEL_KERNELS).transpose(1, 2, 0)[:, :, None, :]
        kernel = ops.convert_to_tensor(kernel, dtype=inputs.dtype)
        return ops.conv(grey, kernel, strides=1, padding="same")

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2)

    def get_config(self) -> dict:
        return {**super().get_config(), "grey_weights": list(self.grey_weights)}
