"""Routed sub-class heads: right head per example, one head's cost per example."""

import numpy as np
import pytest
import tensorflow as tf

from keras_dc import heads


def _layer(num_heads, units, dim, seed=0):
    layer = heads.RoutedDense(num_heads, units)
    layer.build([(None, dim), (None,)])
    rng = np.random.default_rng(seed)
    layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype(np.float32))
    layer.bias.assign(rng.normal(size=layer.bias.shape).astype(np.float32))
    return layer


@pytest.mark.parametrize("num_heads", [1, 4, 16])
def test_each_example_uses_the_head_of_its_route(num_heads):
    layer = _layer(num_heads, units=7, dim=5)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(33, 5)).astype(np.float32)
    routes = rng.integers(0, num_heads, 33).astype(np.int32)
    out = layer([x, routes]).numpy()
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    expected = np.stack([x[b] @ kernel[routes[b]] + bias[routes[b]] for b in range(33)])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_gradient_reaches_only_the_heads_used():
    layer = _layer(6, units=3, dim=4)
    x = np.ones((5, 4), np.float32)
    routes = np.array([0, 0, 2, 5, 2], np.int32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer([x, routes]))
    grad = tape.gradient(loss, layer.kernel)
    grad = tf.convert_to_tensor(grad).numpy()
    used = np.abs(grad).sum(axis=(1, 2)) > 0
    np.testing.assert_array_equal(used, [True, False, True, False, False, True])


@pytest.mark.parametrize("num_heads", [1, 4, 64])
def test_multiply_adds_do_not_grow_with_the_number_of_heads(monkeypatch, num_heads):
    batch, dim, units = 40, 8, 6
    layer = _layer(num_heads, units, dim)
    counted = []

    def counting_matmul(a, b):
        counted.append(int(a.shape[0]) * int(a.shape[1]) * int(b.shape[1]))
        return tf.linalg.matmul(a, b)

    monkeypatch.setattr(heads, "_matmul", counting_matmul)
    routes = np.random.default_rng(0).integers(0, num_heads, batch).astype(np.int32)
    layer([np.ones((batch, dim), np.float32), routes])
    assert sum(counted) == batch * dim * units


def test_reinitialize_is_reproducible_and_small():
    layer = _layer(3, units=4, dim=5)
    heads.reinitialize_dense(layer, seed=7)
    first = layer.kernel.numpy().copy()
    assert np.all(layer.bias.numpy() == 0)
    assert 0.005 < first.std() < 0.02
    heads.reinitialize_dense(layer, seed=7)
    np.testing.assert_array_equal(layer.kernel.numpy(), first)
    heads.reinitialize_dense(layer, seed=8)
    assert not np.array_equal(layer.kernel.numpy(), first)
