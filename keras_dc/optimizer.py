"""SGD with torch's update: coupled L2 weight decay and momentum in gradient units (docs/method.md).

    g <- g + weight_decay * w;  buf <- momentum * buf + g;  w <- w - lr * buf

With momentum it runs as two in-place kernels, so that a step allocates nothing of a variable's
size (at the paper's heads, 21 GB, a temporary `g + weight_decay * w` per head would be gigabytes):
`buf <- buf + (weight_decay / momentum) * w` (`ResourceApplyGradientDescent`, reading w where it
lies), then TensorFlow's fused `ResourceApplyMomentum`: `buf <- momentum * buf + g; w <- w - lr * buf`.
The rounding differs from separate element-wise ops in the last bits.

Keras' own `weight_decay` is decoupled (w <- w - lr * wd * w outside the momentum),
about 10x weaker at momentum 0.9 than the reference's; it stays available with
`decoupled=True`.
"""

from __future__ import annotations

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="keras_dc")
class SGD(keras.optimizers.SGD):
    """torch.optim.SGD's update (no Nesterov, no dampening); decay applies to every trained variable."""

    def __init__(self, learning_rate=0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 decoupled: bool = False, **kwargs):
        kwargs.pop("nesterov", None)
        super().__init__(learning_rate=learning_rate, momentum=momentum,
                         weight_decay=(weight_decay or None) if decoupled else None, **kwargs)
        self.l2 = 0.0 if decoupled else float(weight_decay)
        self.decoupled = decoupled

    def build(self, variables):
        """Momentum buffers even at momentum 0, so that a checkpoint always holds them and a resumed run
        may change --momentum either way (the buffers of a momentum-0 run stay zero)."""
        super().build(variables)
        if not self.momentums:
            self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        buffer = self.momentums[self._get_variable_index(variable)] if self.momentum else None
        torch_update(variable, buffer, gradient, learning_rate, self.momentum, self.l2)

    def get_config(self):
        config = super().get_config()
        config.update(weight_decay=self.l2 or config.get("weight_decay") or 0.0, decoupled=self.decoupled)
        return config


def torch_update(variable, buffer, gradient, learning_rate, momentum: float, l2: float):
    """torch.optim.SGD's step on `variable` in place: coupled decay `l2`, then `momentum` into `buffer`
    (None without momentum); returns the last update op. Also the update of heads owned by groups of
    replicas (keras_dc.model)."""
    dtype = variable.dtype
    learning_rate = ops.cast(learning_rate, dtype)
    gradient = ops.cast(gradient, dtype)
    if not momentum:
        if l2:
            gradient = ops.add(gradient, ops.multiply(variable, ops.cast(l2, dtype)))
        return variable.assign_sub(ops.multiply(gradient, learning_rate))
    momentum = ops.cast(momentum, dtype)
    weight, buffer = _handle(variable), _handle(buffer)
    if l2:
        # momentum * (buf + l2 / momentum * w) + g == momentum * buf + (g + l2 * w): torch's update.
        tf.raw_ops.ResourceApplyGradientDescent(
            var=buffer, alpha=-ops.cast(l2, dtype) / momentum,
            delta=tf.raw_ops.ReadVariableOp(resource=weight, dtype=dtype))
    return tf.raw_ops.ResourceApplyMomentum(var=weight, accum=buffer, lr=learning_rate, grad=gradient,
                                            momentum=momentum)


def _handle(variable):
    """The resource handle of a Keras or tf.Variable (the local copy under a distribution strategy)."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle

