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


def _report(path, top1s, knn=None, nmi=None):
    report = {"layers": {name: {"top1": value, "top5": 1.0} for name, value in top1s.items()}, "knn": {}}
    if knn is not None:
        report["knn"]["top1"] = knn
        report["clusters"] = {"kmeans": {"nmi": nmi}, "model": {"nmi": 0.0}}
    path.write_text(json.dumps(report))
    return str(path)


def test_reads_top1_in_percent_in_network_order(tmp_path):
    path = _report(tmp_path / "a.json", {"block1_relu1": 0.5, "block3_relu2": 0.75, "block2_relu1": 0.6})
    assert list(probe_plot.read_scores(path).items()) == [("block1_relu1", 50.0), ("block3_relu2", 75.0),
                                                         ("block2_relu1", 60.0)]
    (tmp_path / "bad.json").write_text('{"knn": {}}')
    with pytest.raises(probe_plot.ProbeReportError, match="bad.json is not a linear_probe.py report"):
        probe_plot.read_scores(str(tmp_path / "bad.json"))


def test_summarizes_seeds_as_mean_and_sample_deviation(tmp_path):
    top1 = np.array([[0.40, 0.50], [0.44, 0.53], [0.39, 0.56]])
    knn, nmi = np.array([0.30, 0.33, 0.35]), np.array([0.11, 0.12, 0.16])
    paths = [_report(tmp_path / f"s{seed}.json", dict(zip(("block1", "block2"), top1[seed])), knn[seed], nmi[seed])
             for seed in range(3)]
    summary = probe_plot.summarize(paths)
    assert list(summary) == ["block1", "block2", probe_plot.KNN, probe_plot.NMI]
    expected = np.column_stack([100 * top1, 100 * knn, nmi])
    np.testing.assert_allclose([summary[name] for name in summary],
                               np.stack([expected.mean(axis=0), expected.std(axis=0, ddof=1)], axis=1))
    assert probe_plot.summarize(paths[:1])["block1"] == (40.0, 0.0)
    other = _report(tmp_path / "other.json", {"block1": 0.4, "block3": 0.5}, 0.3, 0.1)
    with pytest.raises(probe_plot.ProbeReportError, match="do not report the same layers"):
        probe_plot.summarize([paths[0], other])


def test_table_has_a_row_per_network_and_a_column_per_score(tmp_path):
    summaries = {"trained": {"block1": (45.04, 1.53), probe_plot.KNN: (39.7, 0.9), probe_plot.NMI: (0.1234, 0.005)},
                 "random": {"block1": (43.5, 0.0), "block2": (49.8, 0.0)}}
    assert probe_plot.markdown_table(summaries, {"trained": 3, "random": 1}).splitlines() == [
        "| network | block1 | k-NN top-1 | k-means NMI vs labels | block2 |",
        "|---|---|---|---|---|",
        "| trained | 45.0 ± 1.5 | 39.7 ± 0.9 | 0.123 ± 0.005 | - |",
        "| random | 43.5 | - | - | 49.8 |"]


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


def test_tool_averages_the_reports_a_glob_matches(tmp_path):
    for seed, value in enumerate((0.4, 0.5, 0.6)):
        _report(tmp_path / f"dc_s{seed}.json", {"block1": value}, value / 2, value / 4)
    random = _report(tmp_path / "random.json", {"block1": 0.3}, 0.2, 0.05)
    result = subprocess.run([sys.executable, TOOL, f"--probes={tmp_path / 'dc_s*.json'},{random}",
                             "--labels=trained,random", f"--output={tmp_path / 'plot.png'}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| trained | 50.0 ± 10.0 | 25.0 ± 5.0 | 0.125 ± 0.025 |" in result.stdout.splitlines()
    assert "| random | 30.0 | 20.0 | 0.050 |" in result.stdout.splitlines()
    numbers = json.loads((tmp_path / "plot.json").read_text())
    assert numbers["top1"] == {"trained": {"block1": 50.0}, "random": {"block1": 30.0}}
    assert numbers["reports"]["trained"] == [str(tmp_path / f"dc_s{seed}.json") for seed in range(3)]


@pytest.mark.parametrize("args, flag", [(["--probes=missing.json"], "--probes"), (["--probes=none_*.json"], "--probes"),
                                        (["--probes=a.json,b.json", "--labels=one"], "--labels")])
def test_tool_rejects_a_bad_flag_with_one_line(args, flag):
    result = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith(f"error: {flag}:")
