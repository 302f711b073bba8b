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

The heads of a group of replicas (`momentum_slots`, updated by the train step itself) are further
stored as column blocks of at most BLOCK_BYTES: the train step differentiates and updates one block
after the other, so that it never holds a whole head's gradient (a head is 1.3 GB at the paper's size).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

HEAD_INIT_STDDEV = 0.01
BLOCK_BYTES = 64 * 2**20


def block_widths(dim: int, units: int, block_bytes: int) -> list[int]:
    """Widths of the column blocks of a (dim, units) float32 kernel, each at most `block_bytes`."""
    columns = max(1, block_bytes // (4 * dim))
    return [columns] * (units // columns) + ([units % columns] if units % columns else [])


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
        self.widths = block_widths(dim, self.units, BLOCK_BYTES) if self.momentum_slots else [self.units]
        blocks = [(head, f"_block{block}" if len(self.widths) > 1 else "", width)
                  for head in self.heads for block, width in enumerate(self.widths)]
        # Flat lists, head after head and block after block within a head.
        self.kernels = [self.add_weight(name=f"kernel_{head}{suffix}", shape=(dim, width), initializer=init)
                        for head, suffix, width in blocks]
        self.biases = [self.add_weight(name=f"bias_{head}{suffix}", shape=(width,), initializer="zeros")
                       for head, suffix, width in blocks]
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
            return self._head(features, 0)
        parts, positions = self._partition(features, routes), self._partition(tf.range(tf.shape(features)[0]), routes)
        return tf.dynamic_stitch(positions, [self._head(part, index) for index, part in enumerate(parts)])

    def _partition(self, values, routes) -> list:
        """`values` split by head (a list of one without routing)."""
        if self.num_heads == 1:
            return [values]
        return tf.dynamic_partition(values, tf.cast(routes, tf.int32) - self.first_head, self.num_heads)

    def gradients(self, features, routes, output_gradient) -> list[tuple[keras.Variable, Callable]]:
        """Each variable with a function that makes its gradient from the layer's inputs and the gradient
        of the loss with respect to its output (what the tape would compute for a head's matmul and bias).
        The train step scales `output_gradient` per head (docs/method.md) and, with heads owned by groups,
        makes one block's gradient at a time."""
        features = self._partition(tf.cast(features, self.compute_dtype), routes)
        output_gradient = self._partition(output_gradient, routes)
        starts = np.cumsum([0, *self.widths])
        pairs = []
        for index in range(self.num_heads):
            blocks = self._blocks(index)
            for kernel, bias, start, stop in zip(self.kernels[blocks], self.biases[blocks], starts, starts[1:]):
                def columns(index=index, start=start, stop=stop):
                    gradient = output_gradient[index]
                    return gradient if len(self.widths) == 1 else gradient[:, start:stop]

                pairs.append((kernel, lambda index=index, columns=columns: tf.linalg.matmul(
                    features[index], columns(), transpose_a=True)))
                pairs.append((bias, lambda columns=columns: tf.reduce_sum(columns(), axis=0)))
        return pairs

    def _head(self, features, index: int):
        """The logits of this layer's `index`-th head, block after block."""
        blocks = self._blocks(index)
        logits = [_matmul(features, kernel) + bias for kernel, bias in zip(self.kernels[blocks], self.biases[blocks])]
        return logits[0] if len(logits) == 1 else tf.concat(logits, axis=-1)

    def _blocks(self, index: int) -> slice:
        """Where the `index`-th head's blocks are in `kernels` and `biases`."""
        return slice(index * len(self.widths), (index + 1) * len(self.widths))

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
        splits = np.cumsum(self.widths)[:-1]
        for index, head in enumerate(self.heads):
            blocks = self._blocks(index)
            kernel = _normal(np.random.default_rng([seed, head]), (self.kernels[0].shape[0], self.units))
            for variable, values in zip(self.kernels[blocks], np.split(kernel, splits, axis=1)):
                variable.assign(values)
            for variable in self.biases[blocks]:
                variable.assign(np.zeros(variable.shape, np.float32))


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
