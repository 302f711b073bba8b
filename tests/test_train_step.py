"""One training step of the full model against the NumPy reference step (tests/step_reference.py)."""

import json
import subprocess
import sys


import step_reference
from conftest import ROOT
from keras_dc import train


def _fit(model, batch):
    images, targets = batch
    model.fit(images, targets, batch_size=len(images), epochs=1, shuffle=False, verbose=0)


def test_step_matches_the_reference_update(tmp_path):
    """Per-head means, batch means for the body, coupled decay and torch momentum carried from step 1."""
    cfg = step_reference.config(str(tmp_path))
    train.configure_runtime(cfg)
    model = step_reference.build(cfg)
    first, second = step_reference.batches()
    _fit(model, first)
    expected = step_reference.expected_step(model, *second)
    _fit(model, second)
    step_reference.assert_matches(step_reference.state(model), expected)


MIRRORED = """
import sys, json
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
import step_reference
from keras_dc import distribute, train
cfg = step_reference.config({workdir!r})
train.configure_runtime(cfg)
single = step_reference.build(cfg)
strategy = distribute.get_strategy("mirrored")
with strategy.scope():
    mirrored = step_reference.build(cfg)
mirrored.set_weights(single.get_weights())
first, second = step_reference.batches()
for model in (single, mirrored):
    model.fit(first[0], first[1], batch_size=12, epochs=1, shuffle=False, verbose=0)
expected = step_reference.expected_step(single, *second)
for model in (single, mirrored):
    model.fit(second[0], second[1], batch_size=12, epochs=1, shuffle=False, verbose=0)
step_reference.assert_matches(step_reference.state(single), expected)
step_reference.assert_matches(step_reference.state(mirrored), expected)
gap = max(float(np.max(np.abs(a[0] - b[0]))) for a, b in zip(step_reference.state(single).values(),
                                                              step_reference.state(mirrored).values()))
print("RESULT", json.dumps({{"replicas": strategy.num_replicas_in_sync, "gap": gap}}))
"""


def test_step_on_two_mirrored_replicas_matches_one_device(tmp_path):
    """Head sizes are summed over replicas: 2 replicas give the single-device (and reference) step."""
    script = MIRRORED.format(root=ROOT, tests=f"{ROOT}/tests", workdir=str(tmp_path))
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.split("RESULT", 1)[1])
    assert result["replicas"] == 2 and result["gap"] < 1e-5
