"""Broken files in an image folder are left out and reported; training goes on with the others."""

import dataclasses
import glob
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_dc import sources, train
from keras_dc.config import Config, ConfigError
from keras_dc.workdir import Assignment

GOOD_PER_CLASS = 29


def _encoded(seed, image_format):
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, image_format)
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path):
    """Two classes of 29 decodable images (one a PNG named .jpg) and 3 broken files: 5% of 61."""
    root = tmp_path / "images"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for index in range(GOOD_PER_CLASS):
            (root / label / f"{index:02d}.jpg").write_bytes(_encoded(index + 100 * (label == "b"), "JPEG"))
    (root / "a" / "00.jpg").write_bytes(_encoded(0, "PNG"))
    (root / "a" / "readme.txt").write_text("not an image, and not named like one")
    broken = {"a/truncated.jpg": _encoded(7, "JPEG")[:300], "b/empty.png": b"",
              "b/text.jpeg": b"this is text with an image extension"}
    for name, payload in broken.items():
        (root / name).write_bytes(payload)
    return root, sorted(str(root / name) for name in broken)


def test_readable_flags_exactly_the_broken_files(folder):
    root, broken = folder
    paths = np.array(sorted(glob.glob(f"{root}/*/*.jp*g") + glob.glob(f"{root}/*/*.png")))
    mask = sources.readable(paths)
    assert sorted(paths[~mask]) == broken
    assert mask.sum() == 2 * GOOD_PER_CLASS


def test_training_on_a_folder_with_broken_files_finishes_and_reports_them(folder, tiny_config):
    root, broken = folder
    config = dataclasses.replace(tiny_config, data=str(root), k=4, super_clusters=2, epochs=1)
    lines = []
    result = train.train(config, log=lines.append)
    report = [line for line in lines if "unreadable" in line]
    assert len(report) == 1 and "skipped 3 unreadable files" in report[0]
    assert all(path in report[0] for path in broken)
    assignment = Assignment.load(glob.glob(f"{config.workdir}/assignments/cycle_0000.npz")[0])
    assert len(assignment.super_ids) == 2 * GOOD_PER_CLASS
    assert json.load(open(os.path.join(config.workdir, "config.json")))["num_images"] == 2 * GOOD_PER_CLASS
    assert _scalar(result["tensorboard"], "data/unreadable_files") == 3
    assert _scalar(result["tensorboard"], "data/images") == 2 * GOOD_PER_CLASS


def _scalar(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in glob.glob(f"{folder}/data/events.out.tfevents.*"):
        accumulator = EventAccumulator(events, size_guidance={"tensors": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["tensors"]:
            return float(tf.make_ndarray(accumulator.Tensors(tag)[-1].tensor_proto))
    raise AssertionError(f"{tag} not in {folder}/data")


def test_a_folder_without_any_readable_image_is_a_clear_error(tmp_path):
    (tmp_path / "one.jpg").write_bytes(b"")
    (tmp_path / "two.png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(sources.SourceError, match="none of the 2 image files below .* can be decoded"):
        sources.load_source(str(tmp_path), image_size=16)
    with pytest.raises(ConfigError, match="--data: none of the 2") as error:
        train.prepare_data(Config(workdir=str(tmp_path / "run"), data=str(tmp_path), image_size=16))
    assert error.value.flag == "data"
