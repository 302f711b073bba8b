"""SGD with torch's update: coupled L2 weight decay and momentum in gradient units (docs/method.md).

    g <- g + weight_decay * w;  buf <- momentum * buf + g;  w <- w - lr * buf

The last two lines run as TensorFlow's fused `ResourceApplyMomentum` kernel: the same update in
one pass, without temporaries (its rounding differs from separate ops in the last bits).

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

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.l2:
            gradient = ops.add(gradient, ops.multiply(variable, ops.cast(self.l2, variable.dtype)))
        if not self.momentum:
            self.assign_sub(variable, ops.multiply(gradient, learning_rate))
            return
        buffer = self.momentums[self._get_variable_index(variable)]
        # One pass over weight and buffer, no temporaries of the variable's size: at the paper's
        # heads (21 GB) separate element-wise ops would hold several such copies at once.
        tf.raw_ops.ResourceApplyMomentum(var=_handle(variable), accum=_handle(buffer), lr=learning_rate,
                                         grad=gradient, momentum=ops.cast(self.momentum, variable.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(weight_decay=self.l2 or config.get("weight_decay") or 0.0, decoupled=self.decoupled)
        return config


def _handle(variable):
    """The resource handle of a Keras or tf.Variable (the local copy under a distribution strategy)."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle

