"""The memory plan (--dry_run) against the variables of a built model."""

import os
import subprocess
import sys

import numpy as np

import keras
from keras_dc import memory_plan
from keras_dc.config import Config
from keras_dc.model import DeeperClusterModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bytes(variables) -> int:
    return int(sum(np.prod(v.shape) for v in variables)) * 4


def test_plan_counts_the_bytes_of_the_built_model():
    config = Config(k=60, super_clusters=3, rotation=True, batch_size=8)
    image = keras.Input((4, 4, 3))
    backbone = keras.Model(image, keras.layers.Dense(7)(keras.layers.Flatten()(image)))
    model = DeeperClusterModel(backbone, config.super_classes, config.sub_classes)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    model.optimizer.build(model.trainable_variables)
    figures = memory_plan.plan(config, 2, backbone)
    heads = [w for layer in model.head_layers for w in layer.weights]
    assert figures["heads"] == _bytes(heads)
    assert figures["body"] == _bytes(backbone.weights)
    assert figures["optimizer_slots"] == _bytes(model.optimizer.momentums)
    assert figures["gradients"] == _bytes(model.trainable_variables)
    assert figures["activations"] == 4 * 4 * (48 + 48 + 7 + config.super_classes + config.sub_classes)


def test_dry_run_prints_the_plan_and_touches_no_data(tmp_path):
    completed = subprocess.run([sys.executable, f"{ROOT}/tools/train.py", f"--flagfile={ROOT}/flags/demo.flags",
                                f"--workdir={tmp_path}/run", "--dry_run"],
                               capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "S=8 heads x 10 outputs" in completed.stdout and "optimizer_slots" in completed.stdout
    assert not os.path.exists(tmp_path / "run")


def test_plan_with_head_groups_counts_one_groups_heads_and_the_all_reduce():
    """A replica of 4 groups holds S/4 of the sub-class heads (its model's own variables), and only the
    body and the super-class head are all-reduced over every replica."""
    from keras_dc import head_groups

    config = Config(k=60, super_clusters=2, rotation=True, batch_size=16)  # S = 8 heads of 30 classes
    image = keras.Input((4, 4, 3))
    backbone = keras.Model(image, keras.layers.Dense(7)(keras.layers.Flatten()(image)))
    layout = head_groups.layout(config.super_classes, 4, replica=5, replicas=8)
    model = DeeperClusterModel(backbone, config.super_classes, config.sub_classes, layout)
    figures = memory_plan.plan(config, 8, backbone, groups=4)
    heads = [w for layer in model.head_layers for w in layer.trainable_weights]
    assert figures["heads"] == _bytes(heads)
    assert figures["optimizer_slots"] == _bytes(model.get_layer("sub_heads").momentums) + _bytes(
        [*backbone.trainable_weights, *model.get_layer("super_head").weights])
    assert figures["allreduce_all_replicas"] == _bytes([*backbone.trainable_weights,
                                                        *model.get_layer("super_head").weights])
    assert figures["allreduce_in_group"] == _bytes(model.get_layer("sub_heads").trainable_weights)
    assert memory_plan.plan(config, 8, backbone)["allreduce_in_group"] == 0


def test_plan_with_head_groups_counts_a_column_block_of_head_gradients(monkeypatch):
    """A grouped step holds the gradients of the body and the super-class head, and of one column block
    of a sub-class head at a time, plus the group's sum of it: the measured step (tests/test_head_groups.py,
    docs/scaling.md) is bounded by it."""
    from keras_dc import heads

    config = Config(k=60, super_clusters=2, rotation=True, batch_size=16)  # S = 8 heads of 30 classes, D = 7
    image = keras.Input((4, 4, 3))
    backbone = keras.Model(image, keras.layers.Dense(7)(keras.layers.Flatten()(image)))
    body_and_super = _bytes(backbone.trainable_weights) + (7 * 8 + 8) * 4
    assert memory_plan.plan(config, 8, backbone, groups=4)["gradients"] == body_and_super + 2 * (7 * 30 + 30) * 4
    monkeypatch.setattr(heads, "BLOCK_BYTES", 4 * 7 * 4)  # blocks of 4 columns
    assert memory_plan.plan(config, 8, backbone, groups=4)["gradients"] == body_and_super + 2 * (7 + 1) * 4 * 4
    assert memory_plan.plan(config, 4, backbone, groups=4)["gradients"] == body_and_super + (7 + 1) * 4 * 4
    assert memory_plan.plan(config, 4, backbone)["gradients"] == body_and_super + 8 * (7 * 30 + 30) * 4
