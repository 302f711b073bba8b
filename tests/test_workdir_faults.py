"""A diverging run, settings changed on resume, damaged workdir files and failing disks: each ends in
one line and a documented exit status, nothing good is lost and the advice given works."""

import concurrent.futures
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from keras_dc import config as config_lib, train, workdir as workdir_lib
from keras_dc.config import Config, ConfigError

SETTINGS = dict(data="synthetic", synthetic_size=96, arch="small", image_size=16, batch_size=16, k=8,
                super_clusters=2, pca_dim=16, kmeans_iters=5, min_crop_scale=0.5, verbose=0)
STEPS_PER_EPOCH = 96 // 16
EXIT_DIVERGED, EXIT_BAD_SETTING, EXIT_STORAGE = 1, 2, 3


def _flags(settings):
    return [f"--{key}={value}" for key, value in settings.items()]


def _train(workdir, *flags, point="none", count=0):
    """tools/train.py (through the fault driver, which can make a write fail) as a process."""
    command = [sys.executable, os.path.join(ROOT, "tests", "fault_driver.py"), point, str(count), "KILL",
               *_flags(SETTINGS), f"--workdir={workdir}", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _one_error_line(completed, status, text):
    output = completed.stdout + completed.stderr
    assert completed.returncode == status, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], completed.stderr[-2000:]


def _checkpoints(workdir):
    folder = os.path.join(workdir, "checkpoints")
    return sorted(name[:-len(".index")] for name in os.listdir(folder) if name.endswith(".index"))


def _non_finite(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return [name for name in reader.get_variable_to_shape_map()
            if np.issubdtype(np.asarray(reader.get_tensor(name)).dtype, np.floating)
            and not np.all(np.isfinite(reader.get_tensor(name)))]


def _metrics(workdir):
    return [json.loads(line) for line in open(workdir_lib.metrics_path(workdir))]


def test_diverged_then_a_lower_lr_recovers_from_the_last_finite_checkpoint(tmp_path):
    """At --lr=0.75 epoch 2's losses stay finite but its last update makes the weights non-finite: that
    state must not be saved. The README's advice, a lower --lr and the same command, must then resume
    from epoch 1's checkpoint and train with the new lr (not the one restored with the optimizer)."""
    workdir = str(tmp_path / "run")
    diverged = _train(workdir, "--epochs=2", "--lr=0.75")
    _one_error_line(diverged, EXIT_DIVERGED, "non-finite")
    assert _checkpoints(workdir) == [f"ckpt-{STEPS_PER_EPOCH}"]
    assert not _non_finite(os.path.join(workdir, "checkpoints", f"ckpt-{STEPS_PER_EPOCH}"))

    recovered = _train(workdir, "--epochs=2", "--lr=0.01")
    assert recovered.returncode == 0, (recovered.stdout + recovered.stderr)[-3000:]
    assert f"resuming {workdir} after epoch 1\n" in recovered.stdout
    assert "resume: --lr changed from 0.75 to 0.01" in recovered.stdout
    assert [row["learning_rate"] for row in _metrics(workdir)] == pytest.approx([0.75, 0.01])
    history = [json.loads(line) for line in open(os.path.join(workdir, "settings_history.jsonl"))]
    assert [(entry["after_epoch"], entry["changes"]) for entry in history] == [(1, {"lr": [0.75, 0.01]})]
    for name in _checkpoints(workdir):
        assert not _non_finite(os.path.join(workdir, "checkpoints", name)), name


# name: (flags, fault point and count, exit status, text of the error line); {tmp} is a folder of the test.
FAILURES = {
    "disk_full": ([], ("nospace", 3), EXIT_STORAGE, "No space left on device"),
    "checkpoints_unwritable": ([], ("denied", 1), EXIT_STORAGE, "cannot write a checkpoint"),
    "nan_float_flag": (["--max_cache_gb=nan"], ("none", 0), EXIT_BAD_SETTING, "--max_cache_gb"),
    "seed_too_large": ([f"--seed={2**32}"], ("none", 0), EXIT_BAD_SETTING, "--seed"),
    "nothing_to_learn": (["--k=1", "--super_clusters=1", "--norotation"], ("none", 0), EXIT_BAD_SETTING, "--k"),
    "workdir_under_a_file": (["--workdir={tmp}/file/run"], ("none", 0), EXIT_BAD_SETTING, "is a file"),
}


@pytest.fixture(scope="module")
def failures(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("failures")
    (tmp / "file").write_text("")
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        runs = {name: pool.submit(_train, str(tmp / name), "--epochs=1",
                                  *[flag.format(tmp=tmp) for flag in flags], point=point, count=count)
                for name, (flags, (point, count), _, _) in FAILURES.items()}
    return tmp, {name: run.result() for name, run in runs.items()}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_failure_is_one_line_with_its_exit_status(failures, name):
    tmp, completed = failures[0], failures[1][name]
    _one_error_line(completed, *FAILURES[name][2:])
    if FAILURES[name][2] == EXIT_BAD_SETTING:
        assert not os.path.exists(tmp / name / "checkpoints")


@pytest.mark.parametrize("changes, flag", [
    ({"lr": float("nan")}, "lr"), ({"lr": float("inf")}, "lr"), ({"weight_decay": float("nan")}, "weight_decay"),
    ({"max_cache_gb": float("nan")}, "max_cache_gb"), ({"max_cache_gb": float("inf")}, "max_cache_gb"),
    ({"seed": 2**32}, "seed"), ({"k": 1, "super_clusters": 1, "rotation": False}, "k"),
])
def test_non_finite_floats_huge_seeds_and_nothing_to_learn_are_refused(tiny_config, changes, flag):
    with pytest.raises(ConfigError) as error:
        config_lib.validate(dataclasses.replace(tiny_config, **changes))
    assert error.value.flag == flag


def test_a_workdir_under_a_file_is_refused(tiny_config, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="--workdir: .*file is a file"):
        config_lib.validate(dataclasses.replace(tiny_config, workdir=str(tmp_path / "file" / "run")))


def test_changed_settings_lists_only_those_allowed_to_change(tiny_config):
    changed = dataclasses.replace(tiny_config, lr=0.01, epochs=5, verbose=2, workdir="/elsewhere")
    assert config_lib.changed_settings(changed, tiny_config) == {
        "lr": [tiny_config.lr, 0.01], "epochs": [2, 5], "verbose": [0, 2]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """3 epochs with T=2: checkpoints after epochs 2 and 3, cycle 1 (epochs 2-3) in progress."""
    config = Config(workdir=str(tmp_path_factory.mktemp("trained") / "run"), epochs=3, reassign_every=2,
                    **SETTINGS)
    train.train(config, log=lambda line: None)
    return config


def _damaged_copy(trained, tmp_path, damage):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained.workdir, workdir)
    damage(workdir)
    lines = []
    return dataclasses.replace(trained, workdir=workdir, epochs=4), lines


def _cut(path, size=300):
    os.truncate(path, size)


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous(trained, tmp_path):
    newest = f"ckpt-{3 * STEPS_PER_EPOCH}"
    config, lines = _damaged_copy(trained, tmp_path, lambda workdir: _cut(
        os.path.join(workdir, "checkpoints", f"{newest}.data-00000-of-00001"), 1000))
    train.train(config, log=lines.append)
    assert any(line.startswith("workdir: ") and newest in line and "is damaged" in line for line in lines), lines
    assert f"resuming {config.workdir} after epoch 2" in lines
    assert os.path.exists(os.path.join(config.workdir, "set_aside", "checkpoints", f"{newest}.index"))
    assert [row["epoch"] for row in _metrics(config.workdir)] == [1, 2, 3, 4]


def test_a_garbage_state_file_loses_no_checkpoint(trained, tmp_path):
    """Today's failure: the run started again from epoch 0 and its saves replaced the good checkpoints."""
    config, lines = _damaged_copy(trained, tmp_path, lambda workdir: open(
        os.path.join(workdir, "checkpoints", "checkpoint"), "w").write("garbage garbage\n"))
    train.train(config, log=lines.append)
    assert any("checkpoints/checkpoint is damaged" in line for line in lines), lines
    assert f"resuming {config.workdir} after epoch 3" in lines
    assert _checkpoints(config.workdir) == [f"ckpt-{3 * STEPS_PER_EPOCH}", f"ckpt-{4 * STEPS_PER_EPOCH}"]


def test_damaged_assignments_of_the_current_cycle_fall_back_to_the_cycle_start(trained, tmp_path):
    """Epoch 3 is mid-cycle 1: its checkpoint needs cycle 1's assignments, epoch 2's (the cycle's start)
    does not, since cycle 1 is clustered again from there, as the uninterrupted run did."""
    config, lines = _damaged_copy(trained, tmp_path, lambda workdir: _cut(workdir_lib.assignment_path(workdir, 1)))
    train.train(config, log=lines.append)
    assert any("cycle_0001.npz is damaged" in line and "moved to" in line for line in lines), lines
    assert f"resuming {config.workdir} after epoch 2" in lines
    expected = workdir_lib.Assignment.load(workdir_lib.assignment_path(trained.workdir, 1))
    again = workdir_lib.Assignment.load(workdir_lib.assignment_path(config.workdir, 1))
    np.testing.assert_array_equal(expected.sub_ids, again.sub_ids)


def test_a_damaged_metrics_file_keeps_its_intact_lines(trained, tmp_path):
    config, lines = _damaged_copy(trained, tmp_path, lambda workdir: _cut(
        workdir_lib.metrics_path(workdir), os.path.getsize(workdir_lib.metrics_path(workdir)) - 20))
    train.train(config, log=lines.append)
    assert any("metrics.jsonl had 1 damaged line" in line for line in lines), lines
    assert [row["epoch"] for row in _metrics(config.workdir)] == [1, 2, 4]
    assert os.path.exists(os.path.join(config.workdir, "set_aside", "metrics.jsonl"))


def test_no_intact_checkpoint_is_a_clear_error_and_nothing_is_moved(trained, tmp_path):
    def damage(workdir):
        for name in _checkpoints(workdir):
            _cut(os.path.join(workdir, "checkpoints", f"{name}.data-00000-of-00001"), 1000)

    config, lines = _damaged_copy(trained, tmp_path, damage)
    with pytest.raises(OSError, match="no usable checkpoint .* is damaged"):
        train.train(config, log=lines.append)
    assert len(_checkpoints(config.workdir)) == 2 and not os.path.exists(os.path.join(config.workdir, "set_aside"))


def test_a_damaged_backbone_names_the_file_and_the_fix(trained, tmp_path):
    path = str(tmp_path / "backbone.keras")
    shutil.copy(workdir_lib.backbone_path(trained.workdir), path)
    _cut(path, os.path.getsize(path) // 2)
    with pytest.raises(OSError, match="backbone.keras is damaged .*rerun tools/train.py"):
        workdir_lib.load_backbone(path)


def test_non_finite_features_stop_the_clustering_as_a_divergence(tiny_config):
    """Finite weights can still overflow the features: clustering them must stop as a diverged run,
    not crash in k-means."""
    from keras_dc import backbones, reclustering, sources

    backbone = backbones.build_backbone("small", tiny_config.image_size, seed=0)
    kernel = backbone.get_layer("fc7").kernel
    kernel.assign(np.full(kernel.shape, 3e38, np.float32))
    source = sources.load_source("synthetic", tiny_config.image_size, synthetic_size=96)
    with pytest.raises(workdir_lib.Diverged, match="features hold NaN or infinite values"):
        reclustering.recluster(backbone, source, tiny_config, 0, None, log=lambda line: None)
