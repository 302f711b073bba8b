"""Tests for keras_dc.visualize and tools/visualize_clusters.py: selections, grids, TensorBoard, projector."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from keras_dc import visualize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "visualize_clusters.py")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A one-epoch run on 96 synthetic 16x16 images (k=8, m=2)."""
    from keras_dc import train
    from keras_dc.config import Config

    config = Config(workdir=str(tmp_path_factory.mktemp("viz") / "run"), data="synthetic", synthetic_size=96,
                    arch="small", image_size=16, batch_size=16, epochs=1, k=8, super_clusters=2, pca_dim=16,
                    kmeans_iters=5, min_crop_scale=0.5, verbose=0)
    train.train(config)
    return config.workdir


def test_select_clusters_by_size_and_at_random():
    ids = np.array([5] * 4 + [1] * 9 + [7] * 2 + [3] * 9 + [0] * 1)
    np.testing.assert_array_equal(visualize.select_clusters(ids, "largest", 3), [1, 3, 5])
    np.testing.assert_array_equal(visualize.select_clusters(ids, "smallest", 2), [0, 7])
    chosen = visualize.select_clusters(ids, "random", 4, seed=3)
    assert len(set(chosen.tolist())) == 4 and set(chosen.tolist()) <= {0, 1, 3, 5, 7}
    assert len(visualize.select_clusters(ids, "largest", 50)) == 5


def test_sample_members_come_from_their_cluster():
    ids = np.random.default_rng(0).integers(0, 4, 60)
    members = visualize.sample_members(ids, np.array([2, 0]), 5, seed=1)
    for cluster, rows in zip([2, 0], members):
        assert len(rows) == min(5, np.sum(ids == cluster)) and len(set(rows.tolist())) == len(rows)
        assert np.all(ids[rows] == cluster)


def test_image_grid_places_each_image_in_its_cell():
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 255, (n, 6, 5, 3), dtype=np.uint8) for n in (4, 2, 3)]
    grid = visualize.image_grid(rows, columns=4, padding=2)
    assert grid.shape == (3 * (6 + 2) + 2, 4 * (5 + 2) + 2, 3)
    for row, images in enumerate(rows):
        for column in range(4):
            cell = grid[2 + row * 8:2 + row * 8 + 6, 2 + column * 7:2 + column * 7 + 5]
            expected = images[column] if column < len(images) else np.full((6, 5, 3), 255, np.uint8)
            np.testing.assert_array_equal(cell, expected)


def test_sprite_is_square_and_shrinks_thumbnails_to_fit_the_limit(monkeypatch):
    images = np.zeros((10, 8, 8, 3), np.uint8)
    image, thumb = visualize.sprite(images)
    assert thumb == 8 and image.shape == (4 * 8, 4 * 8, 3)
    monkeypatch.setattr(visualize, "SPRITE_MAX_SIDE", 20)
    image, thumb = visualize.sprite(images)
    assert thumb == 5 and image.shape == (20, 20, 3)


def test_projector_export_is_readable_by_tensorboard(tmp_path):
    from google.protobuf import text_format
    from tensorboard.plugins.projector import ProjectorConfig

    features = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    metadata = {"cluster": np.arange(7) % 2, "label": np.array(list("abcdefg"))}
    visualize.export_projector(str(tmp_path), features, metadata, np.zeros((7, 4, 4, 3), np.uint8))
    config = text_format.Parse((tmp_path / "projector_config.pbtxt").read_text(), ProjectorConfig())
    embedding = config.embeddings[0]
    assert (embedding.tensor_path, embedding.metadata_path) == ("features.tsv", "metadata.tsv")
    assert list(embedding.sprite.single_image_dim) == [4, 4]
    np.testing.assert_allclose(np.loadtxt(tmp_path / "features.tsv", delimiter="\t"), features, rtol=1e-5)
    lines = (tmp_path / "metadata.tsv").read_text().splitlines()
    assert lines[0] == "cluster\tlabel" and lines[3] == "0\tc" and len(lines) == 8
    assert Image.open(tmp_path / "sprite.png").size == (12, 12)


def _image_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(glob.glob(f"{folder}/events.out.tfevents.*")[0], size_guidance={"tensors": 0})
    accumulator.Reload()
    return set(accumulator.Tags()["tensors"])


def test_visualize_run_writes_grids_tensorboard_images_and_projector(workdir, tmp_path):
    summary = visualize.visualize_run(workdir, ["largest", "smallest"], 3, 4, 20, str(tmp_path), seed=0)
    for how in ("largest", "smallest"):
        assert Image.open(tmp_path / f"{how}.png").size == (4 * 18 + 2, 3 * 18 + 2)
    sizes = summary["grids"]["largest"]["sizes"]
    assert sizes == sorted(sizes, reverse=True) and summary["cycle"] == 0
    folder = os.path.join(workdir, "tensorboard", "clusters")
    assert _image_tags(folder) == {"clusters/largest", "clusters/smallest"}
    assert len(open(os.path.join(folder, "metadata.tsv")).read().splitlines()) == 21
    assert np.loadtxt(os.path.join(folder, "features.tsv"), delimiter="\t").shape == (20, 16)


def _run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, flag", [(["--workdir=/x", "--clusters=0"], "--clusters"), ([], "--workdir"),
                                        (["--workdir=/nonexistent"], "--workdir")])
def test_tool_rejects_a_bad_flag_with_one_line(args, flag):
    result = _run_tool(*args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {flag}:")
    assert sum(line.startswith("error") or "Traceback" in line for line in result.stderr.splitlines()) == 1


def test_tool_draws_the_requested_grid(workdir, tmp_path):
    result = _run_tool(f"--workdir={workdir}", "--select=random", "--clusters=2", "--samples=3",
                       "--projector_samples=0", f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(tmp_path / "random.png").size == (3 * 18 + 2, 2 * 18 + 2)
    assert "random" in result.stdout
    statistics = json.loads((tmp_path / "cluster_statistics.json").read_text())
    assert statistics["images"] == 96 and statistics["first"]["cycle"] == 0
    assert set(statistics["latest"]["nmi"]) == {"labels", "mean_colour", "brightness", "edge_energy", "edge_centre"}
    assert statistics["latest"]["sizes"]["clusters"] <= 8 and "edge_centre" in result.stdout
