"""Keras SGD whose momentum and weight-decay updates are single fused TensorFlow kernels.

Keras' SGD writes each update as several element-wise ops, each a temporary of the weight's size:
with S big sub-class heads per step that is several extra copies of the heads in memory and
passes over them in time. The fused kernels do the same arithmetic in the same order (the
results are bit-identical, tested), in one pass and without temporaries.
"""

from __future__ import annotations

import tensorflow as tf

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras


@keras.saving.register_keras_serializable(package="keras_dc")
class FusedSGD(keras.optimizers.SGD):
    """keras.optimizers.SGD (momentum, weight decay), each update one kernel per variable."""

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0 or self.nesterov or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        momentum = self.momentums[self._get_variable_index(variable)]
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=_handle(variable), accum=_handle(momentum), lr=tf.cast(learning_rate, variable.dtype),
            grad=tf.cast(gradient, variable.dtype), momentum=tf.cast(self.momentum, variable.dtype))

    def _apply_weight_decay(self, variables):
        """variable -= variable * (weight_decay * learning_rate) in one kernel: Keras' traced update,
        once TensorFlow's graph optimiser has folded the two scalars, computes the same."""
        if self.weight_decay is None:
            return

        def decay(distribution, variables):
            def apply(variable):
                if self._use_weight_decay(variable):
                    rate = tf.cast(self.weight_decay, variable.dtype) * tf.cast(self.learning_rate, variable.dtype)
                    tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=rate, delta=variable)

            for variable in variables:
                distribution.extended.update(variable.value if isinstance(variable, keras.Variable) else variable,
                                             apply, group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(decay, self._distribution_strategy, variables)


def _handle(variable):
    """The resource handle of a Keras or TensorFlow variable (on this device under a strategy)."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle
