"""Routed sub-class heads: right head per example, one head's cost per example."""

import numpy as np
import pytest
import tensorflow as tf

import keras
from keras_dc import heads
from keras_dc.model import DeeperClusterModel


def _layer(num_heads, units, dim, seed=0):
    layer = heads.RoutedDense(num_heads, units)
    layer.build([(None, dim), (None,)])
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.weights])
    return layer


def _stacked(layer):
    """(S, D, units) kernel and (S, units) bias of a layer, as one array each."""
    return np.stack([k.numpy() for k in layer.kernels]), np.stack([b.numpy() for b in layer.biases])


@pytest.mark.parametrize("num_heads", [1, 4, 16])
def test_each_example_uses_the_head_of_its_route(num_heads):
    layer = _layer(num_heads, units=7, dim=5)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(33, 5)).astype(np.float32)
    routes = rng.integers(0, num_heads, 33).astype(np.int32)
    out = layer([x, routes]).numpy()
    kernel, bias = _stacked(layer)
    expected = np.stack([x[b] @ kernel[routes[b]] + bias[routes[b]] for b in range(33)])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_gradient_reaches_only_the_heads_used():
    layer = _layer(6, units=3, dim=4)
    x = np.ones((5, 4), np.float32)
    routes = np.array([0, 0, 2, 5, 2], np.int32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer([x, routes]))
    grads = tape.gradient(loss, layer.kernels)
    used = [np.abs(tf.convert_to_tensor(grad).numpy()).sum() > 0 for grad in grads]
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
    first, bias = _stacked(layer)
    assert np.all(bias == 0)
    assert 0.005 < first.std() < 0.02
    np.testing.assert_array_equal(first, np.random.default_rng(7).normal(0.0, heads.HEAD_INIT_STDDEV, first.shape)
                                  .astype(np.float32))
    heads.reinitialize_dense(layer, seed=7)
    np.testing.assert_array_equal(_stacked(layer)[0], first)
    heads.reinitialize_dense(layer, seed=8)
    assert not np.array_equal(_stacked(layer)[0], first)


def test_forward_backward_and_momentum_update_match_numpy():
    num_heads, units, dim, batch = 4, 6, 5, 23
    lr, momentum, decay = 0.1, 0.9, 0.01
    layer = _layer(num_heads, units, dim)
    kernel, bias = _stacked(layer)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(batch, dim)).astype(np.float32)
    routes = rng.integers(0, num_heads - 1, batch).astype(np.int32)  # the last head gets no example
    cotangent = rng.normal(size=(batch, units)).astype(np.float32)
    optimizer = keras.optimizers.SGD(lr, momentum=momentum, weight_decay=decay)
    optimizer.build(layer.trainable_variables)
    for slot in optimizer.momentums:
        slot.assign(rng.normal(size=slot.shape).astype(np.float32))
    velocity = [slot.numpy() for slot in optimizer.momentums]
    with tf.GradientTape() as tape:
        out = layer([x, routes])
        loss = tf.reduce_sum(out * cotangent)
    grads = tape.gradient(loss, layer.trainable_variables)
    optimizer.apply(grads, layer.trainable_variables)

    np.testing.assert_allclose(out.numpy(), np.einsum("bd,bdu->bu", x, kernel[routes]) + bias[routes], atol=1e-5)
    onehot = np.eye(num_heads, dtype=np.float32)[routes]
    expected_grads = [*np.einsum("bh,bd,bu->hdu", onehot, x, cotangent), *(onehot.T @ cotangent)]
    for grad, expected in zip(grads, expected_grads):
        np.testing.assert_allclose(tf.convert_to_tensor(grad).numpy(), expected, atol=1e-5)
    for weight, start, grad, slot in zip(layer.trainable_variables, [*kernel, *bias], expected_grads, velocity):
        decayed = start - start * decay * lr
        np.testing.assert_allclose(weight.numpy(), decayed + slot * momentum - grad * lr, atol=1e-5)


def _tiny_model(num_heads: int, dim: int, units: int) -> DeeperClusterModel:
    image = keras.Input((4, 4, 3))
    backbone = keras.Model(image, keras.layers.Dense(dim)(keras.layers.Flatten()(image)))
    model = DeeperClusterModel(backbone, num_heads, units)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-5))
    model.optimizer.build(model.trainable_variables)
    return model


def test_train_step_holds_no_tensor_larger_than_one_head():
    """The traced train step at S=16: besides reads of the variables (weights and momentum), no
    tensor, forward, gradient or update temporary, is larger than one head's (D, units)."""
    num_heads, dim, units, batch = 16, 24, 50, 8
    model = _tiny_model(num_heads, dim, units)
    specs = (tf.TensorSpec((batch, 4, 4, 3), tf.float32),
             {"super": tf.TensorSpec((batch,), tf.int32), "sub": tf.TensorSpec((batch,), tf.int32),
              "weight": tf.TensorSpec((batch,), tf.float32), "index": tf.TensorSpec((batch,), tf.int32)})
    graph = tf.function(model.train_step).get_concrete_function(specs).graph
    sizes = {}
    for op in graph.get_operations():
        if op.type == "ReadVariableOp":
            continue
        for tensor in op.outputs:
            if tensor.shape.rank is not None:
                sizes[f"{op.type} {tensor.name}"] = int(np.prod([d if d is not None else batch for d in tensor.shape]))
    largest = max(sizes, key=sizes.get)
    assert sizes[largest] <= dim * units, f"{largest} has {sizes[largest]} elements, one head {dim * units}"
    assert sum(1 for size in sizes.values() if size == dim * units) >= num_heads  # the check sees the heads


def test_a_head_in_column_blocks_computes_and_starts_as_the_whole_head(monkeypatch):
    """A group's head stored in blocks of at most BLOCK_BYTES (here 3 columns of 7: 3, 3, 1) gives the
    logits of the whole head and re-draws the same values as an unblocked head of the same index."""
    whole = heads.RoutedDense(2, 7, first_head=4, momentum_slots=True)
    whole.build([(None, 5), (None,)])
    monkeypatch.setattr(heads, "BLOCK_BYTES", 3 * 5 * 4)
    blocked = heads.RoutedDense(2, 7, first_head=4, momentum_slots=True)
    blocked.build([(None, 5), (None,)])
    assert blocked.widths == [3, 3, 1] and [k.shape for k in blocked.kernels[:3]] == [(5, 3), (5, 3), (5, 1)]
    assert [k.path.rsplit("/", 1)[1] for k in blocked.kernels] == [
        f"kernel_{h}_block{b}" for h in (4, 5) for b in range(3)]
    whole.reinitialize(11)
    blocked.reinitialize(11)
    for index in range(2):
        joined = np.concatenate([k.numpy() for k in blocked.kernels[3 * index:3 * index + 3]], axis=1)
        np.testing.assert_array_equal(joined, whole.kernels[index].numpy())
    for variable in blocked.biases:
        variable.assign(np.arange(variable.shape[0], dtype=np.float32) + 1)
    for variable, values in zip(whole.biases, [np.array([1, 2, 3, 1, 2, 3, 1], np.float32)] * 2):
        variable.assign(values)
    x = np.random.default_rng(2).normal(size=(9, 5)).astype(np.float32)
    routes = np.array([4, 5, 5, 4, 4, 5, 4, 4, 5], np.int32)
    np.testing.assert_allclose(blocked([x, routes]).numpy(), whole([x, routes]).numpy(), rtol=1e-6, atol=1e-6)
