"""Training under MirroredStrategy with 2 logical CPU devices (2 replicas, sync batch-norm)."""

import json
import os
import subprocess
import sys

from conftest import ROOT

SCRIPT = """
import sys, json
sys.path.insert(0, {root!r})
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_dc.config import Config
from keras_dc import train, distribute
strategy = distribute.get_strategy("mirrored")
config = Config(workdir={workdir!r}, data="synthetic", synthetic_size=64, arch="small", image_size=16,
                batch_size=16, epochs=2, k=4, super_clusters=2, pca_dim=8, kmeans_iters=5,
                min_crop_scale=0.5, strategy="mirrored", verbose=0)
result = train.train(config, log=lambda line: None)
import keras
backbone = keras.models.load_model(result["backbone"])
synced = [layer.synchronized for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
print("RESULT", json.dumps({{"replicas": strategy.num_replicas_in_sync, "synced": all(synced) and bool(synced)}}))
"""


def test_training_runs_on_two_mirrored_replicas_with_sync_batchnorm(tmp_path):
    workdir = str(tmp_path / "mirrored")
    completed = subprocess.run([sys.executable, "-c", SCRIPT.format(root=ROOT, workdir=workdir)],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.split("RESULT", 1)[1])
    assert result == {"replicas": 2, "synced": True}
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(row["loss"] > 0 for row in rows)
