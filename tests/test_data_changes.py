"""Data that is not what it was: folders whose files change, hostile entries, validation sets whose
classes differ from training's (the second reliability round, classes 5 to 7)."""

import io
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import ROOT

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
