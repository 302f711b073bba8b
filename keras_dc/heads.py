"""Per-group sub-class heads: S linear heads, each example routed to one.

docs/method.md requires the cost per example to be one head's, never S heads'. The
batch is partitioned by route (the example's super-class), each part goes
through its own head with one matmul, and the results are stitched back in
batch order, so a batch costs B * D * units multiply-adds whatever S is.

Each head is its own pair of variables (kernel_h, bias_h), not a slice of one
(S, D, units) tensor: the gradient of a slice is a full-size tensor, so S heads
would cost S full-size gradients in the backward pass. With one variable per
head, backward and optimizer work on (D, units) tensors only, and a step holds
the weights, their optimizer slots and one gradient of them (docs/scaling.md).
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

    def __init__(self, num_heads: int, units: int, first_head: int = 0, momentum_slots: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.units = units
        self.first_head = first_head
        self.momentum_slots = momentum_slots

    def build(self, input_shape):
        features_shape = input_shape[0]
        dim = int(features_shape[-1])
        init = keras.initializers.RandomNormal(stddev=HEAD_INIT_STDDEV)
        self.kernels = [self.add_weight(name=f"kernel_{head}", shape=(dim, self.units), initializer=init)
                        for head in self.heads]
        self.biases = [self.add_weight(name=f"bias_{head}", shape=(self.units,), initializer="zeros")
                       for head in self.heads]
        # The heads of a group of replicas (heads owned by groups) are updated by the train step itself,
        # outside Keras' optimizer, which would all-reduce them: their momentum lives here.
        self.momentums = [self.add_weight(name=f"momentum_{variable.name}", shape=variable.shape,
                                          initializer="zeros", trainable=False)
                          for variable in self.trainable_weights] if self.momentum_slots else []

    @property
    def heads(self) -> range:
        """Global indices of the heads this layer holds (all S, or those of one group of replicas)."""
        return range(self.first_head, self.first_head + self.num_heads)

    def call(self, inputs):
        features, routes = inputs
        features = tf.cast(features, self.compute_dtype)
        if self.num_heads == 1:
            return _matmul(features, self.kernels[0]) + self.biases[0]
        routes = tf.cast(routes, tf.int32) - self.first_head
        parts = tf.dynamic_partition(features, routes, self.num_heads)
        positions = tf.dynamic_partition(tf.range(tf.shape(features)[0]), routes, self.num_heads)
        outputs = [_matmul(part, kernel) + bias for part, kernel, bias in zip(parts, self.kernels, self.biases)]
        return tf.dynamic_stitch(positions, outputs)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.units)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "units": self.units,
                "first_head": self.first_head, "momentum_slots": self.momentum_slots}

    def reinitialize(self, seed: int) -> None:
        """Fresh weights. A group's heads draw each head from (seed, its global index), so that a head's
        start does not depend on which replicas hold it."""
        if not self.momentum_slots:
            reinitialize_dense(self, seed)
            return
        for head, kernel, bias in zip(self.heads, self.kernels, self.biases):
            kernel.assign(_normal(np.random.default_rng([seed, head]), kernel.shape))
            bias.assign(np.zeros(bias.shape, np.float32))


def _matmul(a, b):
    """The only multiply in the heads; a seam that tests use to count work."""
    return tf.linalg.matmul(a, b)


def reinitialize_dense(layer: keras.layers.Layer, seed: int) -> None:
    """Draws fresh head weights (normal, std 0.01) and zero biases, reproducibly from `seed`."""
    rng = np.random.default_rng(seed)
    for variable in layer.trainable_weights:
        if "bias" in variable.path.rsplit("/", 1)[-1]:
            variable.assign(np.zeros(variable.shape, np.float32))
        else:
            variable.assign(_normal(rng, variable.shape))


def _normal(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.normal(0.0, HEAD_INIT_STDDEV, shape).astype(np.float32)
