"""Surviving kills, pre-emption, a diverging loss and degenerate features without losing work."""

import dataclasses
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from keras_dc import train, workdir as workdir_lib
from keras_dc.callbacks import NonFiniteLoss
from keras_dc.config import Config, ConfigError
from keras_dc.workdir import Assignment
from keras_dc.sources import ImageSource

SETTINGS = dict(data="synthetic", synthetic_size=96, arch="small", image_size=16, batch_size=16, epochs=3, k=8,
                super_clusters=2, pca_dim=16, kmeans_iters=5, min_crop_scale=0.5, verbose=0)
STEPS_PER_EPOCH = 96 // 16

# Each run resumes the workdir the previous one left: (point, count, signal, exit status, expected output).
KILL_CHAIN = [
    ("batch", 3, "KILL", -9, []),  # mid-epoch 1, before any checkpoint
    ("extract", 2, "KILL", -9, []),  # epoch 1 redone, then mid-extraction of cycle 1
    ("kmeans", 1, "KILL", -9, ["resuming {workdir} after epoch 1\n"]),  # in clustering, after the PCA
    ("checkpoint", 1, "KILL", -9, ["clustering: cycle 1: "]),  # cycle 1 saved, epoch-2 checkpoint half written
    ("batch", 9, "TERM", 143, ["resuming {workdir} after epoch 1\n", "cycle 1 assignments loaded",
                               "pre-empted: saved a checkpoint at epoch 3, batch 4 of 6"]),
    ("none", 0, "KILL", 0, ["resuming {workdir} after epoch 2, batch 4", "cycle 2 assignments loaded"]),
]


def _flags(settings):
    return [f"--{key}={value}" for key, value in settings.items()]


def _run_driver(point, count, signal_name, workdir):
    command = [sys.executable, os.path.join(ROOT, "tests", "fault_driver.py"), point, str(count), signal_name,
               *_flags(SETTINGS), f"--workdir={workdir}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _latest_checkpoint(workdir):
    return tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))


def _cycles(workdir):
    return sorted(os.path.basename(path) for path in glob.glob(f"{workdir}/assignments/cycle_*.npz"))


def _check_stage(stage, completed, workdir):
    """What each interrupted run must have left behind."""
    latest, cycles = _latest_checkpoint(workdir), _cycles(workdir)
    if stage == 0:
        assert latest is None and cycles == ["cycle_0000.npz"]
    if stage in (1, 2):
        assert latest.endswith(f"ckpt-{STEPS_PER_EPOCH}") and cycles == ["cycle_0000.npz"]
    if stage == 3:
        damaged = os.path.join(workdir, "checkpoints", f"ckpt-{2 * STEPS_PER_EPOCH}.index")
        assert os.path.exists(damaged) and latest.endswith(f"ckpt-{STEPS_PER_EPOCH}")
        assert cycles == ["cycle_0000.npz", "cycle_0001.npz"]
    if stage == 4:
        assert latest.endswith(f"ckpt-{2 * STEPS_PER_EPOCH + 4}") and len(cycles) == 3
        assert completed.stdout.count(": extract ") == 1  # cycle 2's summary line, not cycle 1's again
    if stage == 5:
        assert ": extract " not in completed.stdout


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in this process."""
    config = Config(workdir=str(tmp_path_factory.mktemp("reference") / "run"), **SETTINGS)
    train.train(config, log=lambda line: None)
    return config.workdir


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """The same run killed at each point of KILL_CHAIN in turn, each time resumed with the same command."""
    workdir = str(tmp_path_factory.mktemp("interrupted") / "run")
    for stage, (point, count, signal_name, status, expected) in enumerate(KILL_CHAIN):
        completed = _run_driver(point, count, signal_name, workdir)
        output = completed.stdout + completed.stderr
        assert completed.returncode == status, f"stage {stage} ({point}):\n{output[-3000:]}"
        assert "Traceback" not in output, output[-3000:]
        for text in expected:
            assert text.format(workdir=workdir) in output, f"stage {stage}: {text!r} missing in\n{output[-3000:]}"
        _check_stage(stage, completed, workdir)
    return workdir


def test_killed_and_preempted_runs_end_as_the_uninterrupted_run(reference, interrupted):
    assert _cycles(interrupted) == _cycles(reference) == [f"cycle_000{cycle}.npz" for cycle in range(3)]
    for name in _cycles(reference):
        expected, resumed = (Assignment.load(f"{workdir}/assignments/{name}") for workdir in (reference, interrupted))
        np.testing.assert_array_equal(expected.super_ids, resumed.super_ids)
        np.testing.assert_array_equal(expected.sub_ids, resumed.sub_ids)
    expected_weights, resumed_weights = (tf.train.load_checkpoint(_latest_checkpoint(workdir))
                                         for workdir in (reference, interrupted))
    names = [name for name in expected_weights.get_variable_to_shape_map()
             if name.endswith("/.ATTRIBUTES/VARIABLE_VALUE") and not name.startswith("save_counter")]
    assert len(names) > 50  # model, optimizer slots, dropout seeds, metrics, position
    for name in names:
        np.testing.assert_array_equal(expected_weights.get_tensor(name), resumed_weights.get_tensor(name), name)


def test_metrics_of_resumed_epochs_equal_the_uninterrupted_ones(reference, interrupted):
    """The epoch resumed mid-way reports its figures over all its batches."""
    def rows(workdir):
        lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
        return [{key: value for key, value in json.loads(line).items() if not key.endswith("seconds")}
                for line in lines]

    expected, resumed = rows(reference), rows(interrupted)
    assert [row["epoch"] for row in resumed] == [1, 2, 3]
    assert resumed == expected


def test_checkpoint_from_another_configuration_is_a_clear_error(interrupted, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(os.path.join(interrupted, "checkpoints"), workdir / "checkpoints")
    config = Config(workdir=str(workdir), **{**SETTINGS, "k": 4})
    with pytest.raises(ConfigError, match="cannot resume from .*ckpt-18") as error:
        train.train(config, log=lambda line: None)
    assert error.value.flag == "workdir"


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_config, monkeypatch):
    """From the 3rd batch of epoch 2 the loss is NaN: no checkpoint or metrics line may hold that state."""
    from keras_dc.model import DeeperClusterModel

    steps = tf.Variable(0)
    per_example_losses = DeeperClusterModel._per_example_losses

    def poisoned(outputs, targets):
        factor = tf.where(steps.assign_add(1) > STEPS_PER_EPOCH + 2, float("nan"), 1.0)
        return {key: loss * factor for key, loss in per_example_losses(outputs, targets).items()}

    monkeypatch.setattr(DeeperClusterModel, "_per_example_losses", staticmethod(poisoned))
    with pytest.raises(NonFiniteLoss, match="nan at epoch 2, batch 3"):
        train.train(tiny_config, log=lambda line: None)
    latest = _latest_checkpoint(tiny_config.workdir)
    assert latest.endswith(f"ckpt-{STEPS_PER_EPOCH}")
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.all(np.isfinite(value)), name
    epochs = [json.loads(line)["epoch"] for line in open(os.path.join(tiny_config.workdir, "metrics.jsonl"))]
    assert epochs == [1]


def test_identical_images_still_give_k_non_empty_clusters(tiny_config):
    """All features equal (fewer distinct points than k): clustering must neither crash nor leave a cluster empty."""
    images = np.full((64, 16, 16, 3), 128, np.uint8)
    source = ImageSource("identical images", len(images), images=images)
    config = dataclasses.replace(tiny_config, data="identical", epochs=1, k=4, super_clusters=2)
    train.train(config, source, log=lambda line: None)
    assignment = Assignment.load(workdir_lib.assignment_path(config.workdir, 0))
    sizes = np.bincount(assignment.cluster_ids(config.sub_classes), minlength=config.k)
    assert len(sizes) == config.k and sizes.min() > 0
    assert assignment.stats["clusters_empty"] == 0


def test_nothing_is_stored_or_loaded_with_pickle(tmp_path):
    forbidden = re.compile(r"import pickle|from pickle|cPickle|import dill|joblib|allow_pickle=True|safe_mode=False")
    sources = glob.glob(os.path.join(ROOT, "keras_dc", "*.py")) + glob.glob(os.path.join(ROOT, "tools", "*.py"))
    offending = [path for path in sources if forbidden.search(open(path).read())]
    assert sources and not offending
    with pytest.raises(TypeError, match="pickle"):
        workdir_lib.save_npz(str(tmp_path / "objects.npz"), names=np.array(["a", None], dtype=object))
    assert not os.path.exists(tmp_path / "objects.npz")
