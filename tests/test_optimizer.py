"""keras_dc.optimizer.SGD against torch.optim.SGD's update written in NumPy."""

import numpy as np
import tensorflow as tf

from keras_dc.optimizer import SGD


def _torch_sgd(w, gradients, lr, momentum, weight_decay):
    """torch.optim.SGD (dampening 0, no Nesterov): coupled L2, momentum buffer in gradient units."""
    buf = np.zeros_like(w)
    for g in gradients:
        g = g + weight_decay * w
        buf = momentum * buf + g
        w = w - lr * buf
    return w, buf


def _run(optimizer, w, gradients):
    variable = tf.Variable(w)
    for g in gradients:
        optimizer.apply([tf.constant(g)], [variable])
    return variable.numpy()


def test_matches_torch_sgd_with_coupled_decay_and_momentum():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    gradients = [rng.normal(size=w.shape).astype(np.float32) for _ in range(5)]
    optimizer = SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.05)
    expected, buf = _torch_sgd(w.astype(np.float64), gradients, 0.1, 0.9, 0.05)
    np.testing.assert_allclose(_run(optimizer, w, gradients), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(optimizer.momentums[0].numpy(), buf, rtol=1e-5, atol=1e-6)


def test_coupled_decay_is_about_ten_times_stronger_than_decoupled():
    """50 zero-gradient steps at lr * wd = 1e-3: torch-style keeps 0.644 of a weight, decoupled 0.951."""
    zeros = [np.zeros(1, np.float32)] * 50
    coupled = _run(SGD(learning_rate=0.1, momentum=0.9, weight_decay=1e-2), np.ones(1, np.float32), zeros)
    decoupled = _run(SGD(learning_rate=0.1, momentum=0.9, weight_decay=1e-2, decoupled=True),
                     np.ones(1, np.float32), zeros)
    np.testing.assert_allclose(coupled, _torch_sgd(np.ones(1), zeros, 0.1, 0.9, 1e-2)[0], rtol=1e-5)
    np.testing.assert_allclose(decoupled, (1 - 1e-3) ** 50, rtol=1e-5)


def test_config_round_trip_keeps_the_decay_mode():
    for decoupled in (False, True):
        optimizer = SGD(learning_rate=0.1, momentum=0.9, weight_decay=1e-4, decoupled=decoupled)
        copy = SGD.from_config(optimizer.get_config())
        assert (copy.l2, copy.decoupled, copy.weight_decay) == (optimizer.l2, decoupled, optimizer.weight_decay)


def test_matches_torch_sgd_without_momentum():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 2)).astype(np.float32)
    gradients = [rng.normal(size=w.shape).astype(np.float32) for _ in range(3)]
    expected, _ = _torch_sgd(w.astype(np.float64), gradients, 0.1, 0.0, 0.05)
    np.testing.assert_allclose(_run(SGD(learning_rate=0.1, weight_decay=0.05), w, gradients), expected, rtol=1e-5)
