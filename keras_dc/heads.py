"""Per-group sub-class heads: S linear heads, each example routed to one.

docs/method.md requires the cost per example to be one head's, never S heads'. The
batch is partitioned by route (the example's super-class), each part goes
through its own head with one matmul, and the results are stitched back in
batch order, so a batch costs B * D * units multiply-adds whatever S is.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

HEAD_INIT_STDDEV = 0.01


@keras.saving.register_keras_serializable(package="keras_dc")
class RoutedDense(keras.layers.Layer):
    """`num_heads` dense layers of `units` outputs; inputs are [features, routes]."""

    def __init__(self, num_heads: int, units: int, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.units = units

    def build(self, input_shape):
        features_shape = input_shape[0]
        dim = int(features_shape[-1])
        self.kernel = self.add_weight(
            name="kernel", shape=(self.num_heads, dim, self.units),
            initializer=keras.initializers.RandomNormal(stddev=HEAD_INIT_STDDEV))
        self.bias = self.add_weight(name="bias", shape=(self.num_heads, self.units), initializer="zeros")

    def call(self, inputs):
        features, routes = inputs
        features = tf.cast(features, self.compute_dtype)
        if self.num_heads == 1:
            return _matmul(features, self.kernel[0]) + self.bias[0]
        routes = tf.cast(routes, tf.int32)
        parts = tf.dynamic_partition(features, routes, self.num_heads)
        positions = tf.dynamic_partition(tf.range(tf.shape(features)[0]), routes, self.num_heads)
        outputs = [_matmul(part, self.kernel[head]) + self.bias[head] for head, part in enumerate(parts)]
        return tf.dynamic_stitch(positions, outputs)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.units)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "units": self.units}


def _matmul(a, b):
    """The only multiply in the heads; a seam that tests use to count work."""
    return tf.linalg.matmul(a, b)


def reinitialize_dense(layer: keras.layers.Layer, seed: int) -> None:
    """Draws fresh head weights (normal, std 0.01) and zero biases, reproducibly from `seed`."""
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        if variable.path.endswith("bias"):
            variable.assign(np.zeros(variable.shape, np.float32))
        else:
            variable.assign(rng.normal(0.0, HEAD_INIT_STDDEV, variable.shape).astype(np.float32))
