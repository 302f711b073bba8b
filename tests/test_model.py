"""The training model and the callback: labels swapped by re-clustering reach train_step."""

import glob

import numpy as np
import tensorflow as tf

import keras_dc  # noqa: F401
import keras

from keras_dc import model as model_lib, train
from keras_dc.model import DeeperClusterModel
from keras_dc.reclustering import Assignment


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
