"""Fine-tuning: --freeze keeps exactly the layers it names, the tool's JSON, one-line errors."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_dc import backbones, finetune
from keras_dc.sources import load_source

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "finetune.py")
SMALL_UNITS = ["block1_conv1", "block1_bn1", "block2_conv1", "block2_bn1", "block3_conv1", "block3_bn1",
               "block3_conv2", "block3_bn2", "fc6", "fc7"]


def _weights(model):
    """Every variable (BN moving statistics included) of every layer that has some, by layer name."""
    return {layer.name: [weight.numpy().copy() for weight in layer.weights] for layer in model.layers if layer.weights}


@pytest.fixture(scope="module")
def split():
    source = load_source("synthetic", 16, synthetic_size=64)
    return finetune.Split(source, np.arange(48), source, np.arange(48, 64))


@pytest.mark.parametrize("freeze, changed", [
    ("all", []),
    ("block2_bn1", SMALL_UNITS[4:]),
    ("none", SMALL_UNITS),
])
def test_freeze_keeps_the_named_layer_and_those_before_it_and_fixed_sobel_fixed(split, freeze, changed):
    backbone = backbones.build_backbone("small", 16, sobel=True, seed=0)
    before = _weights(backbone)
    settings = finetune.FinetuneSettings(epochs=1, batch_size=16, lr=0.05, freeze=freeze, min_crop_scale=0.5)
    report = finetune.finetune(backbone, split, settings, tf.distribute.get_strategy())
    after = _weights(backbone)
    moved = [name for name in before
             if any(not np.array_equal(a, b) for a, b in zip(before[name], after[name]))]
    assert moved == changed
    assert "grey" in before and "sobel" in before  # the fixed input layers never move
    assert 0.0 <= report["top1"] <= report["top5"] <= 1.0 and report["epochs"] == 1
    assert report["images"] == {"train": 48, "val": 16}
    assert ("block1_conv1" in report["frozen_layers"]) == (freeze != "none")


def test_the_classifier_learns_the_same_whatever_the_scale_of_the_features(split):
    """Trained and random bodies' features differ in scale by orders; one learning rate must fit both."""
    histories = []
    for scale in (1.0, 1000.0):  # a random small net's features have a variance of about 1e-4
        backbone = backbones.build_backbone("small", 16, seed=0)
        fc7 = backbone.get_layer("fc7")
        fc7.set_weights([weight * scale for weight in fc7.get_weights()])
        settings = finetune.FinetuneSettings(epochs=1, batch_size=16, lr=0.05, freeze="all", min_crop_scale=0.5)
        histories.append(finetune.finetune(backbone, split, settings, tf.distribute.get_strategy())["history"])
    np.testing.assert_allclose(histories[0]["loss"], histories[1]["loss"], rtol=1e-2)


@pytest.mark.parametrize("freeze, deterministic", [("all", True), ("none", False)])
def test_a_frozen_body_runs_without_dropout_while_the_classifier_trains(freeze, deterministic):
    backbone = backbones.build_backbone("small", 16, seed=0)
    model = finetune.Classifier(backbone, 10, freeze == "all", seed=0)
    images = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype(np.float32)
    first, second = (model(images, training=True).numpy() for _ in range(2))
    assert np.allclose(first, second) == deterministic  # fc6's dropout draws a new mask each call


def test_an_unknown_layer_to_freeze_is_refused():
    backbone = backbones.build_backbone("small", 16)
    with pytest.raises(finetune.FreezeError, match="no layer 'block9_pool'"):
        finetune.freeze_layers(backbone, "block9_pool")


def _run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=300)


def test_tool_fine_tunes_a_random_init_and_writes_the_report(tmp_path):
    output = tmp_path / "finetune.json"
    result = _run_tool("--random_init", "--arch=small", "--image_size=16", "--train_data=synthetic",
                       "--synthetic_size=80", "--epochs=2", "--batch_size=16", "--freeze=block1_pool",
                       f"--tensorboard_dir={tmp_path / 'tb'}", "--progress_seconds=0", f"--output={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^\d\d:\d\d:\d\d fine-tuning, epoch 2: 16/64 images ", result.stdout, re.M)
    assert "note: training top-1 is measured on random resized crops and flips" in result.stdout
    report = json.loads(output.read_text())
    assert set(report) >= {"top1", "top5", "epochs", "config"} and report["epochs"] == 2
    assert report["frozen_layers"][-1] == "block1_pool"
    assert report["config"]["settings"]["freeze"] == "block1_pool" and report["images"]["val"] == 16
    assert len(report["history"]["val_top1"]) == 2 and report["top1"] == report["history"]["val_top1"][-1]
    assert os.listdir(tmp_path / "tb")
    assert "validation top-1" in result.stdout


@pytest.mark.parametrize("args, flag", [
    (["--random_init", "--image_size=16", "--train_data=synthetic", "--freeze=block9_pool", "--epochs=1"],
     "--freeze"),
    (["--random_init", "--backbone=x.keras"], "--workdir"),
    (["--random_init", "--lr=0"], "--lr"),
])
def test_tool_rejects_a_bad_flag_with_one_line(args, flag):
    result = _run_tool(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # --freeze is checked against the loaded model, after TensorFlow's start-up lines.
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {flag}:")
