"""The per-layer probe plot: reads linear_probe.py reports, draws a PNG, logs it to TensorBoard."""

import glob
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from keras_dc import probe_plot

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "plot_probes.py")


def _report(path, top1s):
    path.write_text(json.dumps({"layers": {name: {"top1": value, "top5": 1.0} for name, value in top1s.items()},
                                "knn": {}}))
    return str(path)


def test_reads_top1_in_percent_in_network_order(tmp_path):
    path = _report(tmp_path / "a.json", {"block1_relu1": 0.5, "block3_relu2": 0.75, "block2_relu1": 0.6})
    assert list(probe_plot.read_top1(path).items()) == [("block1_relu1", 50.0), ("block3_relu2", 75.0),
                                                         ("block2_relu1", 60.0)]
    (tmp_path / "bad.json").write_text('{"knn": {}}')
    with pytest.raises(probe_plot.ProbeReportError, match="bad.json is not a linear_probe.py report"):
        probe_plot.read_top1(str(tmp_path / "bad.json"))


def test_draws_one_line_per_report_over_the_layers_of_all(tmp_path):
    curves = {"trained": {"block1": 90.0, "block2": 95.0}, "random": {"block1": 90.0, "block2": 80.0, "block3": 70.0}}
    png = probe_plot.draw(curves, "probes")
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert image.shape[0] > 300 and image.shape[1] > 400
    # matplotlib's first two colours (C0 blue, C1 orange) are both drawn.
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(image - colour).sum(axis=2) < 30).sum() > 50


def test_tool_writes_the_png_and_a_tensorboard_image(tmp_path):
    first = _report(tmp_path / "trained.json", {"block1_relu1": 0.9, "block2_relu1": 0.95})
    second = _report(tmp_path / "random.json", {"block1_relu1": 0.9, "block2_relu1": 0.85})
    result = subprocess.run([sys.executable, TOOL, f"--probes={first},{second}", "--labels=trained,random",
                             f"--output={tmp_path / 'plot.png'}", f"--tensorboard_dir={tmp_path / 'tb'}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(tmp_path / "plot.png").format == "PNG"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(glob.glob(f"{tmp_path / 'tb'}/events.out.tfevents.*")[0],
                                   size_guidance={"tensors": 0})
    accumulator.Reload()
    assert "probes/top1_per_layer" in accumulator.Tags()["tensors"]


@pytest.mark.parametrize("args, flag", [(["--probes=missing.json"], "--probes"),
                                        (["--probes=a.json,b.json", "--labels=one"], "--labels")])
def test_tool_rejects_a_bad_flag_with_one_line(args, flag):
    result = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith(f"error: {flag}:")
