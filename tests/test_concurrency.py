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
                            rf"\S+, started \S+\); wait for it to end or use another workdir",
                            _last_line(second.stderr))
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


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(child) for child in handle.read().split()]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_the_launcher_reaches_the_workers_which_save_and_stop(tmp_path):
    workdir = str(tmp_path / "run")
    flags = [*SETTINGS, "--synthetic_size=96", "--epochs=50", f"--workdir={workdir}"]
    launcher = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "launch_local.py"), "--workers=2", "--",
                                 *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, workers = [], []
    try:
        for line in launcher.stdout:  # both workers inside fit: their SIGTERM handlers are installed
            lines.append(line)
            if sum("clustering: cycle 0:" in seen for seen in lines) == 2:
                break
        workers = _children(launcher.pid)
        assert len(workers) == 2, "".join(lines[-30:])
        launcher.send_signal(signal.SIGTERM)
        lines.extend(launcher.stdout)
        assert launcher.wait(timeout=300) == 143, "".join(lines[-30:])
        assert not any(_alive(pid) for pid in workers)  # none orphaned
        stops = sorted(line.split("] ", 1)[1] for line in lines if "pre-empted: saved a checkpoint" in line)
        assert len(stops) == 2 and stops[0] == stops[1], "".join(lines[-30:])  # both at the same batch
        epoch, batch, steps = map(int, re.search(r"epoch (\d+), batch (\d+) of (\d+)", stops[0]).groups())
        step = (epoch - 1) * steps + batch  # checkpoints are numbered by global step; any epoch may be the one
        assert os.path.exists(os.path.join(workdir, "checkpoints", f"ckpt-{step}.index")), "".join(lines[-30:])
    finally:
        launcher.kill()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
