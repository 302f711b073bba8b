"""TFRecord shards of an image folder: written byte for byte and resumably, read by index, trained on as
the folder is (same assignments), resumed exactly after SIGKILL, and damaged records skipped."""

import glob
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import ROOT
from keras_dc import data, shards, sources, train
from keras_dc.config import Config
from keras_dc.workdir import Assignment

PER_CLASS = 24
SETTINGS = dict(arch="small", image_size=16, batch_size=16, epochs=2, k=8, super_clusters=2, pca_dim=16,
                kmeans_iters=5, min_crop_scale=0.5, reassign_every=1, verbose=0)


def write_digits_folder(root, per_class=PER_CLASS):
    """The first `per_class` scikit-learn digits of each class, 16x16, as PNGs in one subfolder per class."""
    digits = sources.digits_source(16)
    for label in range(10):
        os.makedirs(root / str(label))
        for slot, index in enumerate(np.flatnonzero(digits.labels == label)[:per_class]):
            Image.fromarray(digits.images[index]).save(root / str(label) / f"{slot:03d}.png")
    return root


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(folder, shards) of 240 digits, in shards of 50 images (the last one shorter)."""
    root = write_digits_folder(tmp_path_factory.mktemp("digits") / "folder")
    output = str(tmp_path_factory.mktemp("digits") / "shards")
    shards.write_shards(str(root), output, images_per_shard=50, workers=3, max_image_mb=64, log=lambda line: None)
    return str(root), output


def test_each_record_holds_the_file_byte_for_byte_and_its_label(digits):
    root, output = digits
    folder, sharded = sources.folder_source(root), shards.shard_source(output)
    assert sharded.num_images == folder.num_images == 10 * PER_CLASS
    assert sharded.class_names == folder.class_names
    np.testing.assert_array_equal(sharded.labels, folder.labels)
    for position in range(folder.num_images):
        assert sharded.reader.read(position) == folder.reader.read(position) != b""
    assert sorted(os.listdir(output)) == sorted(
        ["shards.json", "names.npy", "file_bytes.npy", "labels.npy", "offsets.npy"]
        + [f"shard-{shard:05d}-of-00005.tfrecord" for shard in range(5)])
    records = list(tf.data.TFRecordDataset(sorted(glob.glob(f"{output}/*.tfrecord"))))  # TensorFlow's own reader
    assert len(records) == folder.num_images


def test_a_killed_conversion_writes_only_the_missing_shards(digits, tmp_path, monkeypatch):
    root, complete = digits
    output = str(tmp_path / "shards")
    write_shard = shards._write_shard
    written = []

    def killed_at_the_third(*args):
        if len(written) == 2:
            raise KeyboardInterrupt  # as a kill would, in the middle of the conversion
        written.append(args[2])
        return write_shard(*args)

    monkeypatch.setattr(shards, "_write_shard", killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        shards.write_shards(root, output, images_per_shard=50, workers=1, max_image_mb=64, log=lambda line: None)
    assert not shards.read_manifest(output)["complete"]
    with pytest.raises(sources.SourceError, match="not complete: run tools/make_shards.py"):
        shards.shard_source(output)
    monkeypatch.setattr(shards, "_write_shard", write_shard)
    lines = []
    shards.write_shards(root, output, images_per_shard=50, workers=2, max_image_mb=64, log=lines.append)
    assert lines == [f"writing 3 of 5 shards of {root} to {output}"]
    for name in ["offsets.npy"] + [os.path.basename(path) for path in glob.glob(f"{complete}/*.tfrecord")]:
        assert open(os.path.join(output, name), "rb").read() == open(os.path.join(complete, name), "rb").read()


def test_the_tool_converts_and_refuses_other_settings_for_the_same_output(digits, tmp_path):
    root, _ = digits
    tool = [sys.executable, os.path.join(ROOT, "tools", "make_shards.py"), f"--data={root}",
            f"--output={tmp_path / 'out'}", "--verbose=0"]
    done = subprocess.run(tool + ["--images_per_shard=100"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"240 images in 3 shards; train with --data=shards:{tmp_path / 'out'}" in done.stdout
    refused = subprocess.run(tool + ["--images_per_shard=50"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(f"error: --data: {tmp_path / 'out'} holds shards of")


def _config(workdir, data_spec):
    return Config(workdir=str(workdir), data=data_spec, **SETTINGS)


@pytest.fixture(scope="module")
def shard_run(digits, tmp_path_factory):
    """An uninterrupted run on the shards."""
    config = _config(tmp_path_factory.mktemp("shard_run") / "run", f"shards:{digits[1]}")
    train.train(config, log=lambda line: None)
    return config.workdir


def _assignments(workdir):
    return [Assignment.load(path) for path in sorted(glob.glob(f"{workdir}/assignments/cycle_*.npz"))]


def _assert_same_assignments(expected, found):
    assert len(expected) == len(found) == 2
    for one, other in zip(expected, found):
        np.testing.assert_array_equal(one.super_ids, other.super_ids)
        np.testing.assert_array_equal(one.sub_ids, other.sub_ids)


def test_training_on_the_shards_gives_the_assignments_of_training_on_the_folder(digits, shard_run, tmp_path):
    config = _config(tmp_path / "run", digits[0])
    train.train(config, log=lambda line: None)
    _assert_same_assignments(_assignments(config.workdir), _assignments(shard_run))


def test_a_shard_run_killed_mid_epoch_resumes_exactly(digits, shard_run, tmp_path):
    workdir = tmp_path / "run"
    flags = [f"--{key}={value}" for key, value in SETTINGS.items()] + [f"--data=shards:{digits[1]}",
                                                                         f"--workdir={workdir}"]
    driver = [sys.executable, os.path.join(ROOT, "tests", "fault_driver.py")]
    killed = subprocess.run(driver + ["batch", "20", "KILL", *flags], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]  # in epoch 2 (15 batches an epoch), after cycle 1
    resumed = subprocess.run(driver + ["none", "0", "KILL", *flags], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {workdir} after epoch 1" in resumed.stdout
    _assert_same_assignments(_assignments(shard_run), _assignments(workdir))
    expected, found = (tf.train.load_checkpoint(tf.train.latest_checkpoint(f"{run}/checkpoints"))
                       for run in (shard_run, workdir))
    names = [name for name in expected.get_variable_to_shape_map() if name.endswith("/.ATTRIBUTES/VARIABLE_VALUE")
             and not name.startswith("save_counter")]
    assert len(names) > 50
    for name in names:
        np.testing.assert_array_equal(expected.get_tensor(name), found.get_tensor(name), name)


def _png(seed):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 12, 3), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_damaged_record_a_cut_shard_and_an_undecodable_image_are_skipped_and_counted(tmp_path):
    root = tmp_path / "folder"
    root.mkdir()
    for index in range(12):
        (root / f"{index:02d}.png").write_bytes(_png(index))
    (root / "03.png").write_bytes(b"text, not an image")
    output = str(tmp_path / "shards")
    shards.write_shards(str(root), output, images_per_shard=6, workers=2, max_image_mb=64, log=lambda line: None)
    offsets = np.load(os.path.join(output, "offsets.npy"))
    first, second = sorted(glob.glob(f"{output}/*.tfrecord"))
    with open(first, "r+b") as handle:  # a flipped byte in the middle of image 1's record
        handle.seek(int(offsets[1]) + 60)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.truncate(second, int(offsets[11]) + 20)  # image 11's record cut short
    source = shards.shard_source(output)
    tables = data.LabelTables(12, 12)
    dataset = data.training_dataset(source, tables, 16, 12, rotation=False, seed=0, min_crop_scale=0.5)
    targets = next(iter(dataset))[1]
    weights = dict(zip(targets["index"].numpy(), targets["weight"].numpy()))
    assert sorted(index for index, weight in weights.items() if weight == 0) == [1, 3, 11]
    assert sorted(source.failed) == [f"{first} (record of image 1)", f"{first} (record of image 3)",
                                     f"{second} (record of image 11)"]
    assert list(np.flatnonzero(~source.usable)) == [1, 3, 11]
