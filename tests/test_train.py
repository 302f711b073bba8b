"""Whole runs on tiny synthetic data: determinism, resume, outputs in the workdir."""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_dc import train, workdir as workdir_lib
from keras_dc.workdir import Assignment


def _assignments(workdir):
    return [Assignment.load(path) for path in sorted(glob.glob(f"{workdir}/assignments/*.npz"))]


def _assert_same_assignments(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.super_ids, b.super_ids)
        np.testing.assert_array_equal(a.sub_ids, b.sub_ids)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 3-epoch run that other tests compare against."""
    from keras_dc.config import Config

    config = Config(workdir=str(tmp_path_factory.mktemp("full") / "run"), data="synthetic", synthetic_size=96,
                    arch="small", image_size=16, batch_size=16, epochs=3, k=8, super_clusters=2,
                    pca_dim=16, kmeans_iters=5, min_crop_scale=0.5, verbose=0)
    result = train.train(config)
    return config, result


def test_resume_gives_the_same_assignments_as_an_uninterrupted_run(uninterrupted, tmp_path):
    full, _ = uninterrupted
    config = dataclasses.replace(full, workdir=str(tmp_path / "resumed"), epochs=1)
    train.train(config)
    assert len(_assignments(config.workdir)) == 1
    train.train(dataclasses.replace(config, epochs=3))
    _assert_same_assignments(_assignments(full.workdir), _assignments(config.workdir))
    epochs = [json.loads(line)["epoch"] for line in open(os.path.join(config.workdir, "metrics.jsonl"))]
    assert epochs == [1, 2, 3]


def test_same_seed_same_assignments_other_seed_differs(uninterrupted, tmp_path):
    full, _ = uninterrupted
    again = dataclasses.replace(full, workdir=str(tmp_path / "again"), epochs=2)
    train.train(again)
    _assert_same_assignments(_assignments(full.workdir)[:2], _assignments(again.workdir))
    other = dataclasses.replace(again, workdir=str(tmp_path / "other"), seed=1, epochs=1)
    train.train(other)
    assert not np.array_equal(_assignments(other.workdir)[0].sub_ids, _assignments(full.workdir)[0].sub_ids)


def test_workdir_holds_config_metrics_tensorboard_and_a_self_contained_backbone(uninterrupted):
    config, result = uninterrupted
    saved = workdir_lib.read_run(config.workdir)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "metrics.jsonl", "backbone.json"):
        assert os.stat(os.path.join(config.workdir, name)).st_mode & 0o777 == 0o666 & ~umask
    assert saved.config == config and saved.num_images == config.synthetic_size
    rows = [json.loads(line) for line in open(result["metrics"])]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for key in ("loss", "super_top1", "sub_top1", "full_top1", "cluster_nmi_labels", "kmeans_objective"):
        assert key in rows[-1]
    assert "cluster_nmi_prev" in rows[1]
    assert 0.0 <= result["final_stats"]["cluster_nmi_labels"] <= 1.0
    tags = _tensorboard_tags(result["tensorboard"])
    for tag in ("epoch_loss", "epoch_learning_rate", "epoch_full_top1", "clustering/kmeans_objective",
                "cluster_sizes"):
        assert tag in tags
    code = ("import sys; sys.modules['keras_dc'] = None; import numpy as np, keras; "
            f"m = keras.models.load_model({result['backbone']!r}); "
            "print(m.predict(np.zeros((2, 16, 16, 3), 'float32'), verbose=0).shape)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "(2, 256)" in output


def _tensorboard_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in glob.glob(f"{folder}/**/events.out.tfevents.*", recursive=True):
        accumulator = EventAccumulator(events, size_guidance={"tensors": 0, "histograms": 0})
        accumulator.Reload()
        tags.update(accumulator.Tags()["tensors"] + accumulator.Tags()["histograms"])
    return tags


@pytest.mark.parametrize("name, changes", [
    ("deepcluster", {"rotation": False, "super_clusters": 1}),
    ("rotnet", {"rotation": True, "k": 1, "super_clusters": 1, "sampling": "none"}),
    ("weighted", {"sampling": "weighted", "sobel": True}),
])
def test_special_cases_train(tiny_config, name, changes):
    config = dataclasses.replace(tiny_config, epochs=1, **changes)
    result = train.train(config)
    rows = [json.loads(line) for line in open(result["metrics"])]
    assert len(rows) == 1 and np.isfinite(rows[0]["loss"])


def test_eval_every_logs_knn_and_probe_accuracy_on_its_epochs(tiny_config):
    config = dataclasses.replace(tiny_config, eval_every=2, eval_data="synthetic")
    result = train.train(config)
    rows = [json.loads(line) for line in open(result["metrics"])]
    assert "eval_knn_top1" not in rows[0]
    for key in ("eval_knn_top1", "eval_probe_top1"):
        assert 0.0 <= rows[1][key] <= 1.0
    assert {"epoch_eval_knn_top1", "epoch_eval_probe_top1"} <= _tensorboard_tags(result["tensorboard"])
