"""Tests for the linear probe (keras_dc.probe), its tool and the training-time evaluation callback."""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from keras_dc import backbones, data, evaluation, probe
from keras_dc.eval_callback import EvaluationCallback
from keras_dc.sources import synthetic_source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "linear_probe.py")
QUICK = probe.ProbeSettings(lrs=(0.1,), kfold=0, epochs=15, batch_size=32)


@pytest.fixture(scope="module")
def backbone():
    return backbones.build_backbone("small", 16, seed=0)


def _separable(num_rows, seed, dim=20, classes=4):
    """Gaussian features labelled by a fixed random linear map (so a linear classifier can be perfect)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(num_rows, dim)).astype(np.float32)
    weights = np.random.default_rng(99).normal(size=(dim, classes))
    return features, np.argmax(features @ weights, axis=1)


def _centre_features(backbone, source):
    """The backbone's output for the centre views of every image, computed without the probe code."""
    views = np.concatenate([batch.numpy() for batch in data.clustering_dataset(source, 16, 64)])
    return backbone.predict(views, verbose=0)


@pytest.mark.parametrize("height, width, channels, max_dim", [(32, 32, 32, 10000), (16, 16, 64, 1000),
                                                              (13, 7, 5, 50), (8, 8, 128, 128), (4, 4, 8, 200)])
def test_pool_size_is_the_smallest_window_under_max_dim(height, width, channels, max_dim):
    def size(window):
        return math.ceil(height / window) * math.ceil(width / window) * channels

    window = probe.pool_size(height, width, channels, max_dim)
    assert size(window) <= max_dim
    assert window == 1 or size(window - 1) > max_dim


def test_pool_size_refuses_more_channels_than_max_dim():
    with pytest.raises(probe.PoolingError, match="less than the"):
        probe.pool_size(4, 4, 64, 63)


def test_tap_model_pools_every_layer_under_max_dim_by_averaging(backbone):
    names = backbones.conv_tap_layers(backbone, "all")
    model, shapes = probe.tap_model(backbone, names, max_dim=600)
    images = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)
    outputs = model.predict(images, verbose=0)
    import keras

    for name in names:
        assert outputs[name].shape == (3, shapes[name]["dim"]) and shapes[name]["dim"] <= 600
        raw = keras.Model(backbone.input, backbone.get_layer(name).output).predict(images, verbose=0)
        window = shapes[name]["pool"]
        # 'same' padding centres the windows: the padding left over is split, the smaller half first.
        first = [-((math.ceil(n / window) * window - n) // 2) for n in raw.shape[1:3]]
        cells = [[raw[:, max(r, 0):r + window, max(c, 0):c + window].mean(axis=(1, 2))
                  for c in range(first[1], raw.shape[2], window)] for r in range(first[0], raw.shape[1], window)]
        np.testing.assert_allclose(outputs[name], np.stack([np.stack(row, 1) for row in cells], 1).reshape(3, -1),
                                   rtol=1e-4, atol=1e-5)
    assert max(shape["pool"] for shape in shapes.values()) > 1
    np.testing.assert_allclose(outputs[probe.FEATURES], backbone.predict(images, verbose=0), rtol=1e-5)


def test_probe_separates_separable_features_and_is_at_chance_on_shuffled_labels():
    train, train_labels = _separable(600, 0)
    val, val_labels = _separable(300, 1)
    result = probe.linear_probe({"x": train}, train_labels, {"x": val}, val_labels, 4, QUICK)["x"]
    assert result["top1"] >= 0.95 and result["top5"] == 1.0
    rng = np.random.default_rng(2)
    shuffled = probe.linear_probe({"x": train}, rng.permutation(train_labels), {"x": val},
                                  rng.permutation(val_labels), 4, QUICK)["x"]
    assert shuffled["top1"] < 0.4  # chance is about 0.25-0.3 with these class sizes


def test_heads_trained_together_equal_heads_trained_alone():
    features = {"a": _separable(200, 3)[0], "b": _separable(200, 4, dim=7)[0]}
    labels = _separable(200, 3)[1]
    together = probe.train_heads(features, labels, 4, [("a", 0.1), ("b", 0.01), ("a", 1.0)], QUICK)
    for head, expected in zip([("a", 0.1), ("b", 0.01), ("a", 1.0)], together):
        alone = probe.train_heads(features, labels, 4, [head], QUICK)[0]
        np.testing.assert_allclose(alone[0], expected[0], rtol=1e-5, atol=1e-6)


def test_kfold_scores_each_learning_rate_on_held_out_folds_and_picks_the_best():
    from sklearn.model_selection import StratifiedKFold

    train, labels = _separable(150, 5)
    train = train + np.random.default_rng(6).normal(scale=2.0, size=train.shape).astype(np.float32)
    settings = probe.ProbeSettings(lrs=(3.0, 0.01), kfold=3, epochs=3, batch_size=32)
    choice = probe.choose_learning_rates({"x": train}, labels, 4, settings)["x"]
    for lr in settings.lrs:
        scores = []
        for fit_rows, held_rows in StratifiedKFold(3, shuffle=True, random_state=0).split(train, labels):
            kernel, bias = probe.train_heads({"x": train[fit_rows]}, labels[fit_rows], 4, [("x", lr)], settings)[0]
            scores.append(np.mean(np.argmax(train[held_rows] @ kernel + bias, 1) == labels[held_rows]))
        assert choice["cv_top1"][str(lr)] == pytest.approx(np.mean(scores))
    assert choice["lr"] == max(settings.lrs, key=lambda lr: choice["cv_top1"][str(lr)])
    with pytest.raises(probe.FoldError, match="folds"):
        probe.choose_learning_rates({"x": train[:30]}, labels[:30], 4, probe.ProbeSettings(kfold=40))


def test_a_choice_at_either_end_of_the_grid_is_named_and_one_inside_it_is_not():
    grid = {"0.1": 0.5, "0.01": 0.6, "0.001": 0.4}
    layers = {"low": {"lr": 0.001, "cv_top1": grid}, "inside": {"lr": 0.01, "cv_top1": grid},
              "high": {"lr": 0.1, "cv_top1": grid}, "one_lr": {"lr": 0.1}}
    assert probe.grid_edge_choices(layers) == {"low": "smallest", "high": "largest"}


def test_evaluate_backbone_report_schema_and_knn_on_held_out_features(backbone):
    source = synthetic_source(120, 16, seed=0)
    settings = probe.EvaluationSettings(max_dim=1000, extract_batch_size=64, probe=QUICK)
    names = backbones.conv_tap_layers(backbone)
    clusters = np.arange(120) % 5
    report = json.loads(json.dumps(probe.evaluate_backbone(backbone, names, source, None, settings, clusters)))
    assert list(report["layers"]) == names
    for row in report["layers"].values():
        assert 0 <= row["top1"] <= row["top5"] <= 1 and isinstance(row["dim"], int) and row["dim"] <= 1000
    assert set(report["clusters"]) == {"kmeans", "model"} and report["clusters"]["kmeans"]["k"] == 10
    assert report["images"] == {"train": 96, "val": 24}
    fit_rows, held_rows = probe.holdout(source.labels, 0.2, 0)
    features = _centre_features(backbone, source)
    expected = evaluation.knn_accuracy(features[fit_rows], source.labels[fit_rows], features[held_rows],
                                       source.labels[held_rows], 10)
    assert report["knn"]["top1"] == pytest.approx(expected["top1"])
    assert report["clusters"]["model"] == evaluation.cluster_metrics(source.labels, clusters)


def test_holdout_is_stratified_and_disjoint():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    fit_rows, held_rows = probe.holdout(labels, 0.2, seed=0)
    assert not set(fit_rows) & set(held_rows) and len(fit_rows) + len(held_rows) == 100
    np.testing.assert_array_equal(np.bincount(labels[held_rows]), [2, 4, 6, 8])


def test_callback_logs_figures_every_n_epochs():
    import keras

    backbone = backbones.build_backbone("small", 16, seed=1)
    backbone.trainable = False  # batch-norm statistics stay fixed, so the figures can be recomputed after fit
    train, val = synthetic_source(80, 16, seed=1), synthetic_source(40, 16, seed=2)
    settings = probe.EvaluationSettings(probe=QUICK)
    callback = EvaluationCallback(train, val, every=2, settings=settings)
    model = keras.Model(backbone.input, keras.layers.Dense(10)(backbone.output))
    model.backbone = backbone
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(train.images.astype(np.float32), train.labels, epochs=3, batch_size=40, verbose=0,
                        callbacks=[callback])
    assert len(history.history["eval_knn_top1"]) == 1 and len(history.history["eval_probe_top1"]) == 1
    expected = evaluation.knn_accuracy(_centre_features(backbone, train), train.labels,
                                       _centre_features(backbone, val), val.labels, 10)["top1"]
    assert history.history["eval_knn_top1"][0] == pytest.approx(expected)
    assert 0.0 <= history.history["eval_probe_top1"][0] <= 1.0


def _run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, flag", [(["--random_init", "--lrs=0.1,fast"], "--lrs"),
                                        (["--random_init", "--lrs=0.1,0.2", "--kfold=0"], "--kfold"),
                                        (["--random_init", "--val_fraction=1.5"], "--val_fraction"),
                                        (["--workdir=/x", "--random_init"], "--workdir"),
                                        (["--random_init", "--protocol=reference", "--lrs=0.1,0.2"], "--lrs")])
def test_tool_rejects_a_bad_flag_with_one_line(args, flag):
    result = _run_tool(*args)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith(f"error: {flag}:")


def test_tool_writes_the_report_for_a_random_init_baseline(tmp_path):
    output = tmp_path / "probe.json"
    result = _run_tool("--random_init", "--arch=small", "--image_size=16", "--train_data=synthetic",
                       "--synthetic_size=600", "--lrs=0.1", "--kfold=0", "--epochs=3",
                       "--max_dim=2000", "--progress_seconds=0", f"--output={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^\d\d:\d\d:\d\d probe: extracting features: 256/600 images .* ETA ", result.stdout, re.M)
    assert re.search(r"^\d\d:\d\d:\d\d probe: training 3 linear heads: 1/3 epochs ", result.stdout, re.M)
    report = json.loads(output.read_text())
    assert set(report) >= {"layers", "knn", "clusters", "config"}
    assert list(report["layers"]) == ["block1_relu1", "block2_relu1", "block3_relu2"]
    assert all(set(row) >= {"top1", "top5", "dim"} for row in report["layers"].values())
    assert "block3_relu2" in result.stdout and "k-NN" in result.stdout


def test_reference_schedule_is_inverse_sqrt_of_the_iteration():
    schedule = probe.InverseSqrtDecay(0.05, 1e-2)
    for t in (0, 1, 100, 10000):
        assert float(schedule(t)) == pytest.approx(0.05 / math.sqrt(1 + 0.05 * 1e-2 * t), rel=1e-6)


def test_reference_protocol_learns_from_augmented_views_and_not_from_shuffled_labels(backbone):
    """Trained on crops + flips of synthetic gratings, validated on centre views; shuffled labels give chance."""
    source = synthetic_source(200, 16, seed=0)
    settings = probe.EvaluationSettings(max_dim=1000, probe=probe.ProbeSettings(
        lrs=(0.05,), epochs=8, batch_size=16, weight_decay=1e-5, protocol="reference", min_crop_scale=0.5))
    names = backbones.conv_tap_layers(backbone)[-1:]
    learned = probe.evaluate_backbone(backbone, names, source, None, settings)["layers"][names[0]]["top1"]
    shuffled = synthetic_source(200, 16, seed=0)
    shuffled.labels = np.random.default_rng(1).permutation(shuffled.labels)
    chance = probe.evaluate_backbone(backbone, names, shuffled, None, settings)["layers"][names[0]]["top1"]
    assert learned > 0.6 and chance < 0.35, (learned, chance)


@pytest.mark.parametrize("sobel", [False, True])
def test_reference_protocol_pools_vgg16_at_224_with_reglogs_fixed_windows(sobel):
    """eval_linear.py's RegLog: windows 18, 14, 9, 6, 3 (stride = window, no padding) give 9,216 or 8,192
    values; the max_dim rule would pool with 19, 15, 10, 7 and 4. Other networks and sizes keep that rule."""
    vgg = backbones.build_backbone("vgg16_bn", probe.REFERENCE_IMAGE_SIZE, sobel=sobel)
    names = backbones.conv_tap_layers(vgg, "all")
    reference = probe.reference_layers(vgg, names)
    _, shapes = probe.tap_model(vgg, names, 10000, with_features=False,
                                windows={name: window for name, (window, _) in reference.items()})
    assert [shapes[name]["pool"] for name in names] == [18] * 2 + [14] * 2 + [9] * 3 + [6] * 3 + [3] * 3
    assert [shapes[name]["dim"] for name in names] == [9216] * 2 + [8192] * 2 + [9216] * 3 + [8192] * 6
    assert reference[names[-1]][1] == 0.02  # conv13.sh
    assert probe.reference_layers(backbones.build_backbone("vgg16_bn", 64), names) == {}


def test_reference_protocol_trains_each_layer_with_its_own_learning_rate(backbone):
    """A layer given a vanishing lr stays at its random start (chance); the other, at 0.05, learns."""
    source = synthetic_source(200, 16, seed=0)
    names = backbones.conv_tap_layers(backbone)[-2:]
    model, _ = probe.tap_model(backbone, names, 1000)
    settings = probe.EvaluationSettings(max_dim=1000)
    split = probe.split_features(model, source, None, settings)
    results = probe.reference_probe(model, names, source, split, probe.ProbeSettings(
        lrs=(0.05,), epochs=6, batch_size=16, weight_decay=1e-5, protocol="reference", min_crop_scale=0.5),
        layer_lrs={names[0]: 1e-9})
    assert results[names[0]]["lr"] == 1e-9 and results[names[1]]["lr"] == 0.05
    assert results[names[1]]["top1"] > 0.6 and results[names[0]]["top1"] < 0.4, results
