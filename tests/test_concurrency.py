"""Two runs at once and signals to a multi-worker run (the second reliability round, classes 4 and 8)."""

import os
import re
import signal
import subprocess
import sys

import numpy as np

from conftest import ROOT
from keras_dc.feature_cache import CacheSettings, CacheWriter, cache_directory

SETTINGS = ["--data=synthetic", "--synthetic_size=64", "--arch=small", "--image_size=16", "--batch_size=16",
            "--epochs=1", "--k=4", "--super_clusters=2", "--pca_dim=8", "--kmeans_iters=3", "--verbose=0"]


def _last_line(text):
    return text.strip().splitlines()[-1]


def test_a_second_run_in_a_workdir_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path):
    workdir = str(tmp_path / "run")
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "fault_driver.py"), "batch", "1", "STOP",
                              *SETTINGS, f"--workdir={workdir}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)  # stopped at its first batch, mid-run, lock held
        assert os.WIFSTOPPED(status)
        train = [sys.executable, os.path.join(ROOT, "tools", "train.py"), *SETTINGS, f"--workdir={workdir}"]
        second = subprocess.run(train, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        assert re.fullmatch(rf"error: --workdir: {workdir} is in use by another run \(pid {first.pid} on host "
                            rf"\S+, started \S+\); wait for it to end or use another workdir", _last_line(second.stderr))
    finally:
        first.kill()  # SIGKILL: the lock file still names it, the kernel has released the flock
        first.wait()
    third = subprocess.run(train, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"workdir: taking over the lock of pid {first.pid} on host" in third.stdout
    assert open(os.path.join(workdir, ".lock")).read() == ""  # released on exit


def test_each_clustering_caches_in_a_folder_of_its_own(tmp_path):
    settings = CacheSettings(str(tmp_path / "shared"))
    with cache_directory(settings) as one, cache_directory(settings) as other:
        assert one.directory != other.directory
        assert os.path.dirname(one.directory) == os.path.dirname(other.directory) == settings.directory
    assert os.listdir(settings.directory) == []


def test_a_cache_write_never_follows_a_planted_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    path = tmp_path / "cache" / "worker_0_raw.npy"
    path.parent.mkdir()
    os.symlink(victim, path)
    with CacheWriter(str(path), 4, 3) as writer:
        writer.write(np.ones((4, 3), np.float32))
        cache = writer.finish()
    assert victim.read_text() == "precious"
    assert not os.path.islink(path) and np.array_equal(cache.array, np.ones((4, 3)))
