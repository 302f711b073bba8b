"""Data that is not what it was: folders whose files change, hostile entries, validation sets whose
classes differ from training's (the second reliability round, classes 5 to 7)."""

import dataclasses
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import keras_dc  # noqa: F401
import keras

from conftest import ROOT
from keras_dc import train, workdir
from keras_dc.config import ConfigError

COLOURS = {"a": (220, 30, 30), "b": (30, 220, 30), "c": (30, 30, 220)}


def _png(colour, seed, size=20):
    """A PNG of one colour plus a little noise, so that classes are easy to tell apart."""
    noise = np.random.default_rng(seed).integers(-20, 20, (size, size, 3))
    pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def make_folder(root, classes, per_class):
    """A folder with one sub-folder of `per_class` coloured PNGs per class name."""
    for name in classes:
        os.makedirs(root / name, exist_ok=True)
        for index in range(per_class):
            (root / name / f"{index:03d}.png").write_bytes(_png(COLOURS[name], index + 1000 * ord(name)))
    return root


def last_line(completed):
    """The final line of a process's stderr (TensorFlow may log before it)."""
    return completed.stderr.strip().splitlines()[-1]


def _tool(name, *args, timeout=300):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args], capture_output=True,
                          text=True, timeout=timeout)


def test_probe_matches_validation_classes_by_name_and_refuses_unknown_ones(tmp_path):
    train = make_folder(tmp_path / "train", "abc", 12)
    val = make_folder(tmp_path / "val", "bc", 6)
    output = tmp_path / "probe.json"
    common = ["--random_init", "--arch=small", "--image_size=16", f"--train_data={train}", "--lrs=0.1",
              "--kfold=0", "--epochs=1", "--max_dim=2000"]
    result = _tool("linear_probe.py", *common, f"--val_data={val}", f"--output={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(output.read_text())
    assert report["knn"]["top1"] > 0.9  # 0.0 when each source numbered its classes alone
    os.rename(val / "c", val / "z")
    refused = _tool("linear_probe.py", *common, f"--val_data={val}")
    assert refused.returncode == 2
    assert last_line(refused).startswith("error: --val_data: class 'z'") and "Traceback" not in refused.stderr


def test_evaluation_tools_share_the_class_matching_of_their_validation_data(tmp_path):
    from keras_dc import tool_inputs
    from keras_dc.config import ConfigError

    train = make_folder(tmp_path / "train", "abc", 2)
    val = make_folder(tmp_path / "val", "bc", 2)
    _, matched = tool_inputs.load_train_val(str(train), str(val), 16, None, "", 0, 0)
    assert matched.class_names == ("a", "b", "c") and sorted(set(matched.labels)) == [1, 2]
    os.rename(val / "c", val / "z")
    with pytest.raises(ConfigError, match="val_data"):
        tool_inputs.load_train_val(str(train), str(val), 16, None, "", 0, 0)


HOSTILE_SCRIPT = """
import json, sys
from keras_dc import sources
source = sources.folder_source(sys.argv[1], max_image_mb=1)
print(json.dumps({"images": source.num_images, "skipped": list(source.unreadable)}))
"""


def test_hostile_entries_are_never_opened_and_are_reported(tmp_path):
    root = make_folder(tmp_path / "images", "ab", 4)
    os.mkfifo(root / "a" / "fifo.png")
    os.symlink(root / "a" / "fifo.png", root / "b" / "link_to_fifo.jpg")
    os.symlink("/dev/zero", root / "b" / "zeros.jpg")  # read to its end, it never ends
    os.symlink(tmp_path / "nowhere.png", root / "b" / "dangling.png")
    with open(root / "a" / "huge.jpg", "wb") as handle:
        handle.truncate(3 * 2**20)  # over --max_image_mb=1 (sparse: no disk used)
    with open(os.path.join(os.fsencode(root / "b"), b"bad\xffname.png"), "wb") as handle:
        handle.write(_png(COLOURS["b"], 7))
    loaded = subprocess.run([sys.executable, "-c", HOSTILE_SCRIPT, str(root)], capture_output=True, text=True,
                            timeout=600)  # a FIFO opened for reading waits for a writer forever: a hang guard
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    report = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert report["images"] == 8
    reasons = {entry.split(" (")[0].rsplit("/", 1)[1]: entry.split(" (", 1)[1] for entry in report["skipped"]}
    assert reasons == {"fifo.png": "not a regular file)", "link_to_fifo.jpg": "not a regular file)",
                       "zeros.jpg": "not a regular file)", "dangling.png": "cannot be read: No such file or directory)",
                       "huge.jpg": "3 MB, larger than --max_image_mb=1)", "bad\\xffname.png": "file name is not UTF-8)"}


def test_an_unreadable_sub_folder_is_reported_not_dropped(tmp_path, monkeypatch):
    from keras_dc import sources

    root = make_folder(tmp_path / "images", "abc", 3)
    scandir = os.scandir

    def refuse_c(path):
        if os.path.basename(path) == "c":
            raise PermissionError(13, "Permission denied", path)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_c)  # as chmod 000 would, for a user other than root
    source = sources.folder_source(str(root))
    assert source.num_images == 6
    assert source.unreadable == (f"{root / 'c'} (unreadable folder: Permission denied)",)


def _folder_run(config, root, **changes):
    """tiny_config on an image folder of 24 images: k=4 in 2 super-clusters, batches of 8."""
    return dataclasses.replace(config, data=str(root), k=4, super_clusters=2, batch_size=8, **changes)


def test_a_renamed_file_is_refused_on_resume_unless_the_data_is_reindexed(tmp_path, tiny_config):
    root = make_folder(tmp_path / "images", "ab", 12)
    config = _folder_run(tiny_config, root, epochs=1)
    train.train(config, log=lambda line: None)
    os.rename(root / "a" / "000.png", root / "a" / "zzz.png")  # same count: every later index shifts by one
    resumed = dataclasses.replace(config, epochs=2)
    with pytest.raises(ConfigError, match=r"--data: 1 image files below .* not in the list this workdir "
                                          r"indexed \(first: .*zzz.png\).*--reindex_data"):
        train.prepare_data(resumed)
    lines = []
    train.train(dataclasses.replace(resumed, reindex_data=True), log=lines.append)
    assert "a/zzz.png" in workdir.data_index(config.workdir).names
    assert "a/000.png" not in workdir.data_index(config.workdir).names
    assert any(line.startswith("clustering: cycle 1:") for line in lines)


class Damage(keras.callbacks.Callback):
    """Deletes one image and truncates another when the first epoch ends."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            os.remove(self.root / "a" / "001.png")
            with open(self.root / "b" / "002.png", "r+b") as handle:
                handle.truncate(40)


def test_files_gone_or_truncated_mid_run_are_skipped_counted_and_the_run_resumes(tmp_path, tiny_config,
                                                                                 monkeypatch):
    root = make_folder(tmp_path / "images", "ab", 12)
    run_callbacks = train.run_callbacks
    monkeypatch.setattr(train, "run_callbacks", lambda *args: run_callbacks(*args) + [Damage(root)])
    config = _folder_run(tiny_config, root, epochs=2)
    lines = []
    train.train(config, log=lines.append)
    report = [line for line in lines if "could not be read or decoded" in line]
    assert len(report) == 1 and report[0].startswith("data: skipped 2 files that could not be read or decoded "
                                                     "during epoch 2")
    assert f"{root}/a/001.png" in report[0] and f"{root}/b/002.png" in report[0]
    lines = []
    train.train(dataclasses.replace(config, epochs=3), log=lines.append)
    assert any(line.startswith("resuming") for line in lines)
    skipped = [line for line in lines if line.startswith("data: skipped 2 unreadable files or entries")]
    assert len(skipped) == 1 and "missing or changed since indexed" in skipped[0]
    assert [json.loads(line)["epoch"] for line in open(workdir.metrics_path(config.workdir))] == [1, 2, 3]


def test_training_evaluation_numbers_eval_data_classes_as_the_training_data(tmp_path, tiny_config):
    from keras_dc import sources

    train_folder = make_folder(tmp_path / "train", "abc", 3)
    val_folder = make_folder(tmp_path / "val", "bc", 2)
    config = dataclasses.replace(tiny_config, data=str(train_folder), eval_every=1, eval_data=str(val_folder))
    source = sources.load_source(str(train_folder), 16)
    callback = train.evaluation_callback(config, source)
    assert list(callback.val_source.labels) == [1, 1, 2, 2]  # b and c, as training numbers them
    os.rename(val_folder / "c", val_folder / "z")
    with pytest.raises(ConfigError, match="--eval_data: class 'z' of .* is not a class of the training data"):
        train.evaluation_callback(config, source)
