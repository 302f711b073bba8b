"""Real multi-worker runs: local processes on loopback with TF_CONFIG and MultiWorkerMirroredStrategy.

The clustering test compares 2 workers (TF collectives) with one process on the
same features; the training test runs tools/train.py on 2 workers, then resumes it.
"""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

from conftest import ROOT
from keras_dc import kmeans
from keras_dc.bench import local_cluster, scaling_benchmark
from keras_dc.distribute import Collective
from keras_dc.feature_cache import FeatureCache, ShardedFeatures

TRAIN_FLAGS = ["--data=synthetic", "--synthetic_size=96", "--arch=small", "--image_size=16", "--batch_size=16",
               "--k=8", "--super_clusters=2", "--pca_dim=16", "--kmeans_iters=5", "--min_crop_scale=0.5",
               "--verbose=0"]


def _launch(script, arguments, workers=2):
    lines = []
    status = local_cluster.run_local_cluster(local_cluster.python_command(script, arguments), workers,
                                             write=lines.append)
    return status, lines


def _checksums(lines, worker):
    prefix = f"[worker {worker}] assignments checksum: "
    return [line[len(prefix):] for line in lines if line.startswith(prefix)]


def test_two_workers_cluster_exactly_like_one_process(tmp_path):
    path = str(tmp_path / "features.npy")
    scaling_benchmark.write_synthetic_features(path, 6000, 32, seed=1)
    single = kmeans.hierarchical_kmeans(
        ShardedFeatures(FeatureCache.open(path).array, 0, 6000, Collective()), k=40, m=4, niter=6, seed=0)
    status, lines = _launch(f"{ROOT}/tools/benchmark_clustering.py",
                            ["--case=sharded", f"--cache={path}", "--k=40", "--m=4", "--niter=6"])
    assert status == 0, "\n".join(lines[-30:])
    results = [json.loads(line.split(scaling_benchmark.RESULT_PREFIX, 1)[1]) for line in lines
               if scaling_benchmark.RESULT_PREFIX in line]
    assert sorted(result["worker"] for result in results) == [0, 1]
    expected = kmeans.assignments_checksum(single.super_ids, single.sub_ids)
    assert [result["checksum"] for result in results] == [expected, expected]


def test_two_worker_training_runs_resumes_and_agrees_on_every_clustering(tmp_path):
    workdir = str(tmp_path / "run")
    status, lines = _launch(f"{ROOT}/tools/train.py", [*TRAIN_FLAGS, "--epochs=1", f"--workdir={workdir}"])
    assert status == 0, "\n".join(lines[-30:])
    status, resumed = _launch(f"{ROOT}/tools/train.py", [*TRAIN_FLAGS, "--epochs=2", f"--workdir={workdir}"])
    assert status == 0, "\n".join(resumed[-30:])
    assert any(line.startswith("[worker 1] resuming") for line in resumed)
    for output in (lines, resumed):
        assert len(_checksums(output, 0)) == 1 and _checksums(output, 0) == _checksums(output, 1)
    epochs = [json.loads(line)["epoch"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert epochs == [1, 2]
    assert sorted(os.listdir(os.path.join(workdir, "assignments"))) == ["cycle_0000.npz", "cycle_0001.npz"]
    assert os.path.exists(os.path.join(workdir, "backbone.keras"))
    assert os.listdir(os.path.join(workdir, "feature_cache")) == []


def test_launcher_prefixes_output_and_stops_the_others_when_one_fails(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import json, os, sys, threading\n"
                      "task = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
                      "print('threads', os.environ['OMP_NUM_THREADS'], 'args', sys.argv[1:])\n"
                      "sys.exit(3) if task == 1 else threading.Event().wait()\n")  # worker 0 waits forever
    results = []
    launcher = threading.Thread(target=lambda: results.append(_launch(str(script), ["--x=1"])), daemon=True)
    launcher.start()
    launcher.join(timeout=300)  # a bound against hanging, not a timing: it returns only once worker 0 is stopped
    assert results, "the launcher did not stop worker 0"
    status, lines = results[0]
    assert status == 3
    assert f"[worker 1] threads {max(1, (os.cpu_count() or 1) // 2)} args ['--x=1']" in lines


def test_the_launchers_log_file_gets_each_line_while_the_workers_run(tmp_path):
    """Output to a file is line-buffered: a worker's line is in the log while that worker still waits (for a
    file the test writes only once it has read the line), not when the launcher ends."""
    script, release, log = tmp_path / "worker.py", tmp_path / "release", tmp_path / "log"
    script.write_text("import os, sys, time\n"
                      "print('started', flush=True)\n"
                      f"while not os.path.exists({str(release)!r}):\n"
                      "    time.sleep(0.05)  # waits for the event (the file), not for a time\n")
    with open(log, "w") as output:
        launcher = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "launch_local.py"), "--workers=2",
                                     f"--program={script}"], stdout=output, stderr=subprocess.STDOUT)
        try:
            hang_guard = time.monotonic() + 300  # only so that a launcher that buffers fails instead of hanging
            while launcher.poll() is None and log.read_text().count("] started") < 2 and time.monotonic() < hang_guard:
                time.sleep(0.05)
            seen = log.read_text()
            release.write_text("")
            assert launcher.wait(timeout=300) == 0
        finally:
            launcher.kill()
    assert "[worker 0] started" in seen and "[worker 1] started" in seen, log.read_text()


def test_tf_config_names_every_worker_and_this_task():
    ports = local_cluster.free_ports(3)
    assert len(set(ports)) == 3
    config = json.loads(local_cluster.tf_config(ports, 2))
    assert config == {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                      "task": {"type": "worker", "index": 2}}
    assert local_cluster.python_command("a.py", ["-b"]) == [sys.executable, "a.py", "-b"]
    assert np.all(np.array(ports) > 0)


WEIGHTS_SCRIPT = """
import functools, hashlib, sys
sys.path.insert(0, {root!r})
import numpy as np
from keras_dc import data, distribute, train
from keras_dc.config import Config
strategy = distribute.get_strategy("auto")
config = Config(workdir="unused", data="synthetic", synthetic_size=64, arch="small", image_size=16, batch_size=16,
                k=8, super_clusters=2, min_crop_scale=0.5)
source = train.prepare_data(config, log=lambda line: None)
train.configure_runtime(config)
tables = data.LabelTables(64, 64)
rng = np.random.default_rng(0)
tables.set_assignments(rng.integers(0, 2, 64), rng.integers(0, 4, 64), np.ones(64))
tables.set_plan(rng.permutation(64), rng.integers(0, 4, 64), 0)
with strategy.scope():
    model = train.build_model(config, sync_batchnorm=True)
make_dataset = functools.partial(data.training_dataset, source, tables, 16, rotation=True, seed=0, min_crop_scale=0.5)
batches = train.worker_dataset(strategy, make_dataset, 16, train.head_layout(config, strategy))
with distribute.keras_fit_context(model, strategy):
    model.fit(batches, epochs=2, verbose=0)
seen = [int(index) for batch in batches for local in strategy.experimental_local_results(batch[1]["index"])
        for index in local.numpy()]
print("SEEN", sorted(seen))
digest = hashlib.sha256(b"".join(np.asarray(weight.numpy()).tobytes() for weight in model.weights))
print("WEIGHTS", digest.hexdigest(), model.optimizer.iterations.numpy())
"""


def test_two_workers_train_on_disjoint_shards_and_keep_identical_weights(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(WEIGHTS_SCRIPT.format(root=ROOT))
    status, lines = _launch(str(script), [])
    assert status == 0, "\n".join(lines[-30:])
    weights = sorted(line.split("] ", 1)[1] for line in lines if "WEIGHTS" in line)
    assert len(weights) == 2 and weights[0] == weights[1]
    assert weights[0].endswith(" 8")  # 64 images / global batch 16 = 4 steps per epoch, 2 epochs
    seen = [json.loads(line.split("SEEN ", 1)[1]) for line in lines if "SEEN" in line]
    assert len(seen) == 2 and not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(64))


def test_clustering_benchmark_reports_every_case_and_refuses_bad_flags(tmp_path):
    import subprocess

    output = tmp_path / "scaling.json"
    tool = f"{ROOT}/tools/benchmark_clustering.py"
    completed = subprocess.run([sys.executable, tool, "--sizes=3000", "--ks=40,1000", "--dim=16", "--niter=3",
                                f"--workdir={tmp_path}", f"--output={output}"], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "N=3000 k=1000: skipped" in completed.stdout and "| 3,000 | 40 |" in completed.stdout
    (row,) = json.loads(output.read_text())
    assert row["bare_faiss"]["seconds"] > 0 and row["one_process"]["peak_rss_gb"] > 0
    assert len(row["workers"]["checksums"]) == 1 and row["one_process"]["checksum"] == row["workers"]["checksums"][0]
    bad = subprocess.run([sys.executable, tool, "--ks=42"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --ks: 42 is not a multiple of --m=4"
