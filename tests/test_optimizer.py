"""The fused SGD: the same numbers as Keras' SGD, momentum and weight decay included."""

import numpy as np
import pytest
import tensorflow as tf

import keras
from keras_dc.optimizer import FusedSGD


def _trained(optimizer_class, weight_decay, momentum=0.9, steps=3):
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=shape).astype(np.float32)) for shape in [(40, 30), (30,)]]
    optimizer = optimizer_class(0.1, momentum=momentum, weight_decay=weight_decay)
    optimizer.build(variables)
    apply = tf.function(lambda grads: optimizer.apply(grads, variables))
    for _ in range(steps):
        apply([tf.constant(rng.normal(size=v.shape).astype(np.float32)) for v in variables])
    return [v.numpy() for v in variables] + [m.numpy() for m in optimizer.momentums]


@pytest.mark.parametrize("weight_decay, momentum", [(None, 0.9), (1e-3, 0.9), (1e-5, 0.5), (1e-3, 0.0)])
def test_fused_sgd_is_bit_identical_to_keras_sgd(weight_decay, momentum):
    for fused, reference in zip(_trained(FusedSGD, weight_decay, momentum),
                                _trained(keras.optimizers.SGD, weight_decay, momentum)):
        np.testing.assert_array_equal(fused, reference)


def test_fused_sgd_update_is_not_a_no_op():
    before = _trained(FusedSGD, 1e-3, steps=0)
    after = _trained(FusedSGD, 1e-3, steps=1)
    assert all(not np.array_equal(a, b) for a, b in zip(before[:2], after[:2]))
