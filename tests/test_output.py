"""What a person reads: the output of tools/train.py when stdout is a file, and the progress module."""

import io
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from keras_dc import progress, reclustering, shapes

TF_LOG_LINE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog")


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    """stdout + stderr of a 2-epoch run on a generated folder of 288 images, output to a pipe, with
    the default TF_CPP_MIN_LOG_LEVEL and verbosity, and a progress line at every step."""
    folder = tmp_path_factory.mktemp("shapes")
    shapes.write_shapes_folder(str(folder / "images"), 288, size=16)
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    command = [sys.executable, os.path.join(ROOT, "tools", "train.py"), f"--data={folder / 'images'}",
               f"--workdir={folder / 'run'}", "--arch=small", "--image_size=16", "--batch_size=96", "--epochs=2",
               "--k=8", "--super_clusters=2", "--reassign_every=1", "--pca_dim=16", "--kmeans_iters=3",
               "--progress_seconds=0"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout + completed.stderr


def test_output_has_short_lines_no_carriage_return_no_tensorflow_log_and_no_warning(run_output):
    lines = run_output.splitlines()
    assert "\r" not in run_output and "\x1b" not in run_output
    assert max(len(line) for line in lines) <= 200
    assert [line for line in lines if TF_LOG_LINE.search(line) or "Warning" in line] == []


def test_one_line_per_clustering_and_one_per_epoch(run_output):
    lines = run_output.splitlines()
    clusterings = [line for line in lines if line.startswith("clustering: cycle ")]
    assert [line.split(":")[1] for line in clusterings] == [" cycle 0", " cycle 1"]
    assert "NMI vs previous" in clusterings[1] and "NMI vs labels" in clusterings[1]
    assert "checksum" not in run_output  # one worker
    epochs = [line for line in lines if re.match(r"^3/3 - ", line)]
    assert len(epochs) == 2 and "cluster" not in epochs[0]


@pytest.mark.parametrize("stage", ["data: listing the folder", "clustering: extracting features",
                                   "clustering: PCA moments", "clustering: k-means into 2 clusters",
                                   "clustering: k-means into 2 x 4 sub-clusters"])
def test_each_long_stage_prints_timestamped_progress_with_rate_and_eta(run_output, stage):
    pattern = re.compile(rf"^\d\d:\d\d:\d\d {re.escape(stage)}: [\d,]+/[\d,]+ \w+s \(\d+%\), [\d.,]+ \w+s/s, "
                         r"ETA \d+:\d\d:\d\d$")
    assert any(pattern.match(line) for line in run_output.splitlines())


def _stage_output(verbose, interval, updates, total=4, tty=False):
    stream = io.StringIO()
    stream.isatty = lambda: tty
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdout", stream)
        patch.setattr(progress, "TERMINAL_INTERVAL", 0.0)
        with progress.reporting(verbose, interval):
            stage = progress.Stage("work", total, "item")
            for done in updates:
                stage.update(done)
    return stream.getvalue()


def test_plain_lines_are_spaced_by_the_interval_and_none_at_the_end():
    assert _stage_output(2, 0.0, [1, 2, 3, 4]).count("\n") == 3
    assert _stage_output(2, 3600.0, [1, 2, 3, 4]) == ""


def test_on_a_terminal_the_stage_is_one_line_erased_at_the_end():
    out = _stage_output(progress.AUTO, 10.0, [1, 2, 3, 4], tty=True)
    assert "\n" not in out and out.startswith("\r") and out.endswith("\r\x1b[K")


def test_auto_verbosity_follows_the_terminal_and_outside_reporting_nothing_shows():
    assert "\r" not in _stage_output(progress.AUTO, 0.0, [1, 2, 3, 4], tty=False)
    stream = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdout", stream)
        stage = progress.Stage("work", 4, "item")
        stage.update(1)
    assert stream.getvalue() == ""


def test_summary_line_of_a_clustering():
    stats = {"extract_seconds": 2.3456, "pca_seconds": 0.03, "kmeans_seconds": 0.4, "kmeans_objective": 1292.61,
             "cluster_nmi_prev": 0.61, "empty_split": 1, "cluster_size_min": 3}
    assert reclustering.summary_line(3, stats) == ("clustering: cycle 3: extract 2.35 s, PCA 0.03 s, k-means 0.40 s, "
                                                   "objective 1292.6, NMI vs previous 0.610, 1 empty clusters split")


def test_tensorflow_start_up_filter_drops_only_absl_info_lines(capfd):
    from keras_dc import startup

    with startup.stderr_without_noise():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                    b"I0000 00:00:1796285265.956499   11333 port.cc:153] oneDNN custom operations are on.\n"
                    b"E0000 00:00:1796284601.908238    5085 cuda_platform.cc:52] failed call to cuInit\n"
                    b"a line of our own\n")
    assert capfd.readouterr().err.splitlines() == [
        "E0000 00:00:1796284601.908238    5085 cuda_platform.cc:52] failed call to cuInit", "a line of our own"]
