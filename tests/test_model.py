"""The training model and the callback: labels swapped by re-clustering reach train_step."""

import glob

import numpy as np
import tensorflow as tf

import keras_dc  # noqa: F401
import keras

from keras_dc import model as model_lib, train
from keras_dc.model import DeeperClusterModel
from keras_dc.workdir import Assignment


def test_label_swap_reaches_the_train_step(tiny_config, monkeypatch):
    """Every batch train_step sees carries the assignments of its epoch's cycle, not older ones."""
    seen = []
    original = DeeperClusterModel.train_step

    def recording_train_step(self, data):
        _, targets = data

        def record(index, super_target, sub_target):
            seen.append((index.numpy(), super_target.numpy(), sub_target.numpy()))
            return 0

        tf.py_function(record, [targets["index"], targets["super"], targets["sub"]], tf.int32)
        return original(self, data)

    monkeypatch.setattr(DeeperClusterModel, "train_step", recording_train_step)
    tiny_config.epochs = 3
    train.train(tiny_config)
    cycles = [Assignment.load(p) for p in sorted(glob.glob(f"{tiny_config.workdir}/assignments/*.npz"))]
    assert len(cycles) == 3
    steps = len(seen) // 3
    changed = 0
    for step, (index, super_target, sub_target) in enumerate(seen):
        current, previous = cycles[step // steps], cycles[max(step // steps - 1, 0)]
        np.testing.assert_array_equal(super_target // 4, current.super_ids[index])
        np.testing.assert_array_equal(sub_target, current.sub_ids[index])
        changed += int(np.any(previous.sub_ids[index] != current.sub_ids[index]))
    assert changed > 0, "assignments never changed, so the test could not tell stale labels apart"


def test_reset_heads_redraws_heads_and_zeroes_only_their_momentum(tiny_config):
    train.configure_runtime(tiny_config)
    model = train.build_model(tiny_config)
    images = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype(np.float32)
    targets = {"super": np.arange(8) % 8, "sub": np.arange(8) % 4, "weight": np.ones(8, np.float32),
               "index": np.arange(8)}
    model.fit(images, targets, batch_size=8, epochs=2, verbose=0)
    head = model.get_layer("sub_heads")
    before = head.kernels[0].numpy().copy()
    model_lib.reset_heads(model, seed=3)
    assert not np.allclose(head.kernels[0].numpy(), before)
    for layer in model.head_layers:
        for variable in layer.trainable_weights:
            slots = model_lib.optimizer_slots(model.optimizer, variable)
            assert slots and all(np.all(slot.numpy() == 0) for slot in slots)
    backbone_slots = model_lib.optimizer_slots(model.optimizer, model.backbone.trainable_weights[0])
    assert np.any(backbone_slots[0].numpy() != 0)


def test_full_top1_needs_both_levels_right(tiny_config):
    train.configure_runtime(tiny_config)
    model = train.build_model(tiny_config)
    outputs = {"super": tf.constant([[5.0, 0.0], [5.0, 0.0], [0.0, 5.0]]),
               "sub": tf.constant([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])}
    targets = {"super": tf.constant([0, 0, 0]), "sub": tf.constant([0, 0, 0])}
    model._update_metrics(outputs, targets, model._per_example_losses(outputs, targets))
    results = {metric.name: float(metric.result()) for metric in model.metrics}
    assert np.isclose(results["super_top1"], 2 / 3)
    assert np.isclose(results["sub_top1"], 2 / 3)
    assert np.isclose(results["full_top1"], 1 / 3)


def test_private_keras_apis_still_exist():
    """The two private Keras APIs keras-dc uses (model.optimizer_slots, distribute.keras_fit_context):
    if Keras renames or stops calling them, this fails before a run silently keeps stale momentum
    or multi-worker fit breaks."""
    variables = [keras.Variable(np.ones(3, np.float32)), keras.Variable(np.ones(2, np.float32))]
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(variables)
    assert [optimizer._get_variable_index(variable) for variable in variables] == [0, 1]
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    calls = []
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: calls.append(1)
    model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=1, verbose=0)
    assert calls, "keras fit no longer calls Model._maybe_symbolic_build"


def _heads_across_a_cycle(config, monkeypatch) -> dict:
    """Each head's weights and momentum just before and after the re-clustering callback resets heads."""
    snapshots = {}
    original = model_lib.reset_heads

    def snapshot(model):
        return {layer.name: [(v.numpy().copy(), model_lib.optimizer_slots(model.optimizer, v)[0].numpy().copy())
                             for v in layer.trainable_weights] for layer in model.head_layers}

    def recording_reset(model, seed, **kwargs):
        before = snapshot(model)
        original(model, seed, **kwargs)
        snapshots.setdefault("cycles", []).append((before, snapshot(model)))

    monkeypatch.setattr(model_lib, "reset_heads", recording_reset)
    config.epochs = 2
    train.train(config, log=lambda line: None)
    return snapshots["cycles"][1]  # cycle 0 starts from fresh heads; cycle 1 follows an epoch of training


def test_rotnet_keeps_its_rotation_head_across_a_cycle(tiny_config, monkeypatch):
    """k = 1, m = 1: the super-class targets are the rotations; the head and its momentum survive."""
    tiny_config.k, tiny_config.super_clusters, tiny_config.sampling = 1, 1, "none"
    before, after = _heads_across_a_cycle(tiny_config, monkeypatch)
    for (weights, slot), (weights_after, slot_after) in zip(before["super_head"], after["super_head"]):
        assert np.any(slot != 0)
        np.testing.assert_array_equal(weights_after, weights)
        np.testing.assert_array_equal(slot_after, slot)


def test_deepercluster_resets_both_heads_and_their_momentum(tiny_config, monkeypatch):
    before, after = _heads_across_a_cycle(tiny_config, monkeypatch)
    for name in ("super_head", "sub_heads"):
        kernel, slot = before[name][0]
        kernel_after = after[name][0][0]
        assert np.any(slot != 0) and not np.allclose(kernel_after, kernel)
        assert all(np.all(slot_after == 0) for _, slot_after in after[name])


class _CountedBackward(keras.layers.Layer):
    """Identity whose backward pass adds one to `count`: a stateful op, as synchronised batch norm's
    collectives are, which TensorFlow runs even when no requested gradient needs it."""

    def build(self, input_shape):
        self.count = self.add_weight(shape=(), initializer="zeros", trainable=False, name="count")

    def call(self, x):
        @tf.custom_gradient
        def identity(value):
            def backward(upstream):
                self.count.assign_add(1.0)
                return tf.identity(upstream)
            return tf.identity(value), backward
        return identity(x)


def test_a_train_step_runs_the_bodys_backward_pass_once():
    """The heads' own averaging (B / n_j) is applied to the one backward pass of the batch loss; a second
    loss for the heads would run the body's backward (and its batch norm's all-reduces) a second time."""
    image = keras.Input((4, 4, 3))
    counted = _CountedBackward()
    hidden = keras.layers.Dense(5)(keras.layers.Flatten()(image))
    backbone = keras.Model(image, keras.layers.Dense(6)(counted(hidden)))
    model = DeeperClusterModel(backbone, super_classes=2, sub_classes=3)
    model.compile(keras.optimizers.SGD(0.1))
    targets = {"super": np.array([0, 1, 1, 0]), "sub": np.array([2, 0, 1, 1]), "weight": np.ones(4, np.float32),
               "index": np.arange(4)}
    model.fit(np.ones((4, 4, 4, 3), np.float32), targets, batch_size=4, epochs=3, verbose=0)
    assert float(counted.count.numpy()) == 3.0
