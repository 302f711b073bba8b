"""Broken files in an image folder are left out and reported; training goes on with the others."""

import dataclasses
import glob
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_dc import data, sources, train, workdir
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


def test_guarded_decode_fails_exactly_on_the_broken_files(folder):
    root, broken = folder
    paths = sorted(glob.glob(f"{root}/*/*.jp*g") + glob.glob(f"{root}/*/*.png"))
    decoded = {path: bool(sources.guarded_decode(tf.constant(open(path, "rb").read()))[1]) for path in paths}
    assert sorted(path for path, ok in decoded.items() if not ok) == broken
    assert sum(decoded.values()) == 2 * GOOD_PER_CLASS


class CountedReads:
    """Counts the image files read (every decode starts with one)."""

    def __init__(self, monkeypatch):
        self.paths = []
        read = sources.read_regular_file
        monkeypatch.setattr(sources, "read_regular_file", lambda path, *args: self.paths.append(path)
                            or read(path, *args))


def test_starting_and_resuming_decode_nothing_and_broken_files_are_skipped_when_read(folder, tiny_config,
                                                                                      monkeypatch):
    """No decode pass at start: broken files are found when clustering reads them, weigh 0, are
    reported once, recorded in the workdir and never read again, on resume either."""
    root, broken = folder
    reads = CountedReads(monkeypatch)
    config = dataclasses.replace(tiny_config, data=str(root), k=4, super_clusters=2, epochs=1)
    source = train.prepare_data(config, log=lambda line: None)
    assert reads.paths == [] and source.num_images == 2 * GOOD_PER_CLASS + 3
    lines = []
    result = train.train(config, source, log=lines.append)
    report = [line for line in lines if "could not be read or decoded" in line]
    assert len(report) == 1 and report[0].startswith("data: skipped 3 files that could not be read or decoded "
                                                     "during epoch 1 (3 in all)")
    assert all(path in report[0] for path in broken)
    assert len(Assignment.load(glob.glob(f"{config.workdir}/assignments/cycle_0000.npz")[0]).super_ids) == 61
    assert _scalar(result["tensorboard"], "data/images") == 2 * GOOD_PER_CLASS + 3
    assert int(workdir.data_index(config.workdir).failed.sum()) == 3

    reads.paths.clear()
    resumed = dataclasses.replace(config, epochs=2)
    lines = []
    source = train.prepare_data(resumed, log=lines.append)
    assert reads.paths == []
    skipped = [line for line in lines if line.startswith("data: skipped 3 unreadable files or entries")]
    assert len(skipped) == 1 and skipped[0].count("could not be read or decoded in an earlier run") == 3
    train.train(resumed, source, log=lines.append)
    assert reads.paths and not set(map(str, reads.paths)) & set(broken)
    assert not [line for line in lines if "could not be read or decoded during" in line]


def test_a_broken_file_weighs_nothing_in_its_batch(folder):
    root, broken = folder
    source = sources.load_source(str(root), image_size=16)
    tables = data.LabelTables(source.num_images, source.num_images)
    dataset = data.training_dataset(source, tables, 16, source.num_images, rotation=False, seed=0,
                                    min_crop_scale=0.5)
    targets = next(iter(dataset))[1]
    weights = dict(zip(targets["index"].numpy(), targets["weight"].numpy()))
    broken_indices = [source.index.names.index(os.path.relpath(path, root)) for path in broken]
    assert sorted(index for index, weight in weights.items() if weight == 0) == sorted(broken_indices)
    assert sorted(source.failed) == broken and int(source.usable.sum()) == 2 * GOOD_PER_CLASS


def _scalar(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in glob.glob(f"{folder}/data/events.out.tfevents.*"):
        accumulator = EventAccumulator(events, size_guidance={"tensors": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["tensors"]:
            return float(tf.make_ndarray(accumulator.Tensors(tag)[-1].tensor_proto))
    raise AssertionError(f"{tag} not in {folder}/data")


def test_a_folder_without_any_decodable_image_is_a_clear_error(tmp_path):
    (tmp_path / "one.jpg").write_bytes(b"")
    (tmp_path / "two.png").write_bytes(b"\x89PNG\r\n")
    config = Config(workdir=str(tmp_path / "run"), data=str(tmp_path), image_size=16, arch="small", batch_size=2,
                    k=2, super_clusters=1, pca_dim=4, kmeans_iters=2, epochs=1, verbose=0)
    with pytest.raises(ConfigError, match=r"--data: none of the 2 images of folder .* can be read or decoded") \
            as error:
        train.train(config, log=lambda line: None)
    assert error.value.flag == "data"


def test_an_index_of_an_earlier_version_which_left_broken_files_out_still_resumes(folder, tmp_path):
    """Earlier versions decoded every file at start and indexed the good ones only, paths joined by NUL."""
    root, broken = folder
    found, _ = sources.scan_folder(str(root), 2**20)
    good = sorted(name for name in found if str(root / name) not in broken)
    workdir.save_npz(workdir.data_index_path(str(tmp_path)), names_utf8=np.frombuffer("\0".join(good).encode(),
                                                                                      np.uint8),
                     file_bytes=np.array([found[name] for name in good], np.int64))
    source = sources.folder_source(str(root), index=workdir.data_index(str(tmp_path)))
    assert source.num_images == 2 * GOOD_PER_CLASS and source.index.names == good
    assert [entry for entry in source.unreadable if "not indexed" in entry] == [
        f"{path} (cannot be decoded, not indexed)" for path in broken]
    os.rename(root / "b" / "03.jpg", root / "b" / "zz.jpg")
    with pytest.raises(sources.DataChangedError, match=r"not in the list this workdir indexed \(first: .*zz.jpg\)"):
        sources.folder_source(str(root), index=workdir.data_index(str(tmp_path)))
