"""The third reliability round (issue 25): one test per class of failure it found."""

import dataclasses
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf

import keras
from conftest import ROOT
from keras_dc import backbones, config as config_lib, shapes, sources, train, visualize, workdir as workdir_lib
from keras_dc.bench import local_cluster
from keras_dc.config import Config, ConfigError
from keras_dc.feature_cache import CacheWriter
from keras_dc.workdir import Assignment

MULTI_WORKER_FLAGS = ["--data=synthetic", "--synthetic_size=96", "--arch=small", "--image_size=16",
                      "--batch_size=16", "--k=8", "--super_clusters=2", "--pca_dim=16", "--kmeans_iters=5",
                      "--min_crop_scale=0.5", "--epochs=2", "--verbose=0"]


def _launch(program, arguments, workers=2):
    lines = []
    status = local_cluster.run_local_cluster(local_cluster.python_command(program, arguments), workers,
                                             write=lines.append)
    return status, lines


def _checkpoint_values(workdir):
    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
    names = [name for name in reader.get_variable_to_shape_map()
             if name.endswith("/.ATTRIBUTES/VARIABLE_VALUE") and not name.startswith("save_counter")]
    return {name: reader.get_tensor(name) for name in names}


def test_a_preempted_two_worker_run_resumes_mid_epoch_and_ends_as_the_uninterrupted_run(tmp_path):
    """Class 1: SIGTERM at a batch of epoch 1 (both workers save there), then a rerun of the same command."""
    whole, stopped = str(tmp_path / "whole"), str(tmp_path / "stopped")
    status, lines = _launch(f"{ROOT}/tools/train.py", [*MULTI_WORKER_FLAGS, f"--workdir={whole}"])
    assert status == 0, "\n".join(lines[-30:])
    status, lines = _launch(f"{ROOT}/tests/fault_driver.py",
                            ["batch", "2", "TERM", *MULTI_WORKER_FLAGS, f"--workdir={stopped}"])
    assert status == 143, "\n".join(lines[-30:])
    assert sum("pre-empted: saved a checkpoint at epoch 1, batch 3 of 6" in line for line in lines) == 2, lines[-30:]
    status, lines = _launch(f"{ROOT}/tools/train.py", [*MULTI_WORKER_FLAGS, f"--workdir={stopped}"])
    assert status == 0, "\n".join(lines[-30:])
    assert f"[worker 1] resuming {stopped} after epoch 0, batch 3" in lines
    for cycle in (0, 1):
        expected, resumed = (Assignment.load(f"{workdir}/assignments/cycle_000{cycle}.npz")
                             for workdir in (whole, stopped))
        np.testing.assert_array_equal(expected.super_ids, resumed.super_ids)
        np.testing.assert_array_equal(expected.sub_ids, resumed.sub_ids)
    expected, resumed = _checkpoint_values(whole), _checkpoint_values(stopped)
    assert len(expected) > 50 and expected.keys() == resumed.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(value, resumed[name], name)


WAITING_WORKER = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda signum, frame: (print("saved on", signum, flush=True), sys.exit(143)))
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def test_sigint_to_the_launcher_stops_every_worker_without_a_traceback(tmp_path):
    """Class 1: Ctrl-C (SIGINT) to the launcher reaches each worker as SIGTERM (save and stop); it exits 130."""
    script = tmp_path / "worker.py"
    script.write_text(WAITING_WORKER)
    launcher = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "launch_local.py"), "--workers=2",
                                 f"--program={script}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in launcher.stdout:
            lines.append(line)
            if sum(seen.endswith("] ready\n") for seen in lines) == 2:
                break
        launcher.send_signal(signal.SIGINT)
        lines.extend(launcher.stdout)
        assert launcher.wait(timeout=120) == 130, "".join(lines)
    finally:
        launcher.kill()
    assert sorted(line for line in lines if "saved on" in line) == [f"[worker {index}] saved on 15\n"
                                                                    for index in range(2)]
    assert "Traceback" not in "".join(lines)


def test_the_launcher_reports_a_worker_killed_by_a_signal_as_128_plus_its_number(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    assert _launch(str(script), [])[0] == 128 + 9


def test_the_launchers_workers_listen_on_loopback_only():
    """Class 8: every address of the TF_CONFIG the launcher writes is 127.0.0.1."""
    ports = local_cluster.free_ports(2)
    for index in range(2):
        config = json.loads(local_cluster.worker_environment(ports, index, 1)["TF_CONFIG"])
        assert all(address.startswith("127.0.0.1:") for address in config["cluster"]["worker"])


FOLDER_SETTINGS = dict(arch="small", image_size=16, batch_size=16, k=8, super_clusters=2, pca_dim=16,
                       kmeans_iters=5, min_crop_scale=0.5, verbose=0)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """3 epochs with T=2 on a folder of 64 PNGs: checkpoints after epochs 2 and 3, a data index."""
    root = tmp_path_factory.mktemp("folder_run")
    shapes.write_shapes_folder(str(root / "images"), 64, size=20)
    config = Config(workdir=str(root / "run"), data=str(root / "images"), epochs=3, reassign_every=2,
                    **FOLDER_SETTINGS)
    train.train(config, log=lambda line: None)
    return config


def _damage(path, how):
    if how == "missing":
        os.remove(path)
    elif how == "empty":
        os.truncate(path, 0)
    elif how == "truncated":
        os.truncate(path, os.path.getsize(path) // 2)
    elif how == "binary":
        with open(path, "wb") as handle:
            handle.write(bytes(range(256)) * 3)
    else:  # binary bytes after the file's own
        with open(path, "ab") as handle:
            handle.write(b"\xff\xfe\x00\x80garbage\n")


WORKDIR_FILES = ["config.json", "data_index.npz", "metrics.jsonl", "checkpoints/checkpoint",
                 "checkpoints/ckpt-12.index", "checkpoints/ckpt-12.data-00000-of-00001", "assignments/cycle_0001.npz",
                 "assignments/cycle_0000.npz", "backbone.keras", "backbone.json", ".lock"]


@pytest.mark.parametrize("how", ["missing", "empty", "truncated", "binary", "appended"])
def test_every_damaged_workdir_file_is_recovered_or_one_line_naming_it(folder_run, tmp_path, how):
    """Class 2: a rerun with one file of the workdir missing, empty, cut short or binary either resumes
    (the file set aside or rebuilt) or stops with an error of a class tools/train.py prints as one line."""
    outcomes = {}
    for name in WORKDIR_FILES:
        workdir = str(tmp_path / name.replace("/", "_"))
        shutil.copytree(folder_run.workdir, workdir)
        _damage(os.path.join(workdir, name), how)
        try:
            epochs = 4 if name == "metrics.jsonl" else 3  # 3: restore and export only, unless a file is missing
            train.train(dataclasses.replace(folder_run, workdir=workdir, epochs=epochs), log=lambda line: None)
            outcomes[name] = "resumed"
        except (ConfigError, workdir_lib.StorageError) as error:
            assert name.split("/")[-1] in str(error) or "ckpt-" in str(error), (name, str(error))
            outcomes[name] = "refused"
    assert outcomes["config.json"] == ("resumed" if how == "missing" else "refused")


def test_a_missing_assignments_file_of_a_cycle_resumed_mid_way_is_refused_not_clustered_again(folder_run,
                                                                                            tmp_path):
    """Class 2: epoch 3 is mid-cycle 1; without cycle 1's file the run would cluster it with the epoch-3
    model (the uninterrupted run used epoch 2's) and exit 0 with other results. The checkpoint at epoch 2,
    the cycle's start, needs no file: the run resumes from there and clusters as the uninterrupted run."""
    workdir = str(tmp_path / "run")
    shutil.copytree(folder_run.workdir, workdir)
    os.remove(workdir_lib.assignment_path(workdir, 1))
    lines = []
    train.train(dataclasses.replace(folder_run, workdir=workdir, epochs=4), log=lines.append)
    assert f"resuming {workdir} after epoch 2" in lines, lines
    expected = Assignment.load(workdir_lib.assignment_path(folder_run.workdir, 1))
    np.testing.assert_array_equal(expected.sub_ids, Assignment.load(workdir_lib.assignment_path(workdir, 1)).sub_ids)
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    shutil.copytree(os.path.join(folder_run.workdir, "checkpoints"), os.path.join(workdir, "checkpoints"))
    os.remove(os.path.join(workdir, "checkpoints", "ckpt-8.index"))  # only the mid-cycle checkpoint left
    os.remove(workdir_lib.assignment_path(workdir, 1))
    with pytest.raises(workdir_lib.StorageError, match=r"cycle_0001.npz, which is missing"):
        train.train(dataclasses.replace(folder_run, workdir=workdir, epochs=4), log=lambda line: None)


def test_no_write_follows_a_link_planted_at_a_name_the_run_writes(folder_run, tmp_path):
    """Class 3: links at every predictable name (the layout's files and folders, a checkpoint's, a cache's)
    are removed, not followed, and one at the export's old fixed temporary name is never written through;
    nothing outside the workdir changes."""
    workdir = str(tmp_path / "run")
    shutil.copytree(folder_run.workdir, workdir)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("precious")
    planted = ["backbone.keras.tmp.keras", "checkpoints/ckpt-20_temp", "checkpoints/ckpt-20.index",
               "assignments/cycle_0002.npz", "metrics.jsonl", "backbone.json", "settings_history.jsonl"]
    for name in planted:
        os.remove(os.path.join(workdir, name)) if os.path.lexists(os.path.join(workdir, name)) else None
        os.symlink(victim, os.path.join(workdir, name))
    for folder in ("tensorboard", "feature_cache"):
        shutil.rmtree(os.path.join(workdir, folder), ignore_errors=True)
        os.symlink(outside, os.path.join(workdir, folder))
    lines = []
    train.train(dataclasses.replace(folder_run, workdir=workdir, epochs=5), log=lines.append)
    assert sorted(os.listdir(outside)) == ["victim.txt"] and victim.read_text() == "precious"
    written = [name for name in planted if name != "backbone.keras.tmp.keras"]  # the export no longer uses it
    for name in [*written, "tensorboard", "feature_cache"]:
        assert not os.path.islink(os.path.join(workdir, name)), name
    assert sum(line.startswith("workdir: removed the link ") for line in lines) == len(written) + 2, lines
    assert os.path.islink(os.path.join(workdir, "backbone.keras.tmp.keras"))  # left alone, never written through


def test_exports_and_pictures_replace_a_planted_link_instead_of_writing_through_it(tmp_path):
    """Class 3: the backbone export, PNGs, the projector files and tool outputs write a new file and rename it."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    backbone = backbones.build_backbone("small", 16, seed=0)
    os.symlink(victim, tmp_path / "backbone.keras")
    workdir_lib.save_backbone(str(tmp_path), backbone, {})
    folder = tmp_path / "projector"
    folder.mkdir()
    for name in ["features.tsv", "metadata.tsv", "sprite.png", "projector_config.pbtxt"]:
        os.symlink(victim, folder / name)
    visualize.export_projector(str(folder), np.ones((4, 3)), {"cluster": np.arange(4)},
                               np.zeros((4, 8, 8, 3), np.uint8))
    os.symlink(victim, tmp_path / "grid.png")
    visualize.save_png(np.zeros((4, 4, 3), np.uint8), str(tmp_path / "grid.png"))
    assert victim.read_text() == "precious"
    links = [path for path in tmp_path.rglob("*") if path.is_symlink()]
    assert links == []
    assert keras.models.load_model(tmp_path / "backbone.keras").output_shape[-1] > 0


TOOLS_WITH_NUMBERS = ["linear_probe", "finetune", "visualize_clusters", "make_shapes", "launch_local",
                      "benchmark_clustering"]
ENUMERATE = """
import importlib.util, json, math, sys
from absl import flags
from keras_dc import config
spec = importlib.util.spec_from_file_location("tool", sys.argv[1])
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
tool.define_flags()
flags.FLAGS(["tool", "--output=unused"] if sys.argv[1].endswith("make_shapes.py") else ["tool"])
modules = flags.FLAGS.flags_by_module_dict()
numeric = {flag.name: flag for module, defined in modules.items() if not module.startswith("absl.")
           for flag in defined if isinstance(flag.parser, (flags.IntegerParser, flags.FloatParser))
           or flag.name in tool.RANGES}
results = {}
for name, flag in numeric.items():
    for value in (math.nan, math.inf, -math.inf, 0, -1, 1e300, 2**62):
        flag.value = [str(value)] if isinstance(flag.value, list) else value
        try:
            config.check_flag_numbers(flags.FLAGS, tool.RANGES)
            results[f"{name}={value}"] = "accepted" if value in tool.RANGES[name] else "UNCHECKED"
        except KeyError:
            results[name] = "NOT IN RANGES"
        except config.ConfigError as error:
            results[f"{name}={value}"] = "refused" if error.flag == name else f"wrong flag {error.flag}"
        flag.value = flag.default
print(json.dumps(results))
"""


@pytest.mark.parametrize("tool", TOOLS_WITH_NUMBERS)
def test_every_numeric_flag_of_every_tool_refuses_nan_inf_and_out_of_range_values(tool):
    """Class 5: each int/float flag of the tool has a Range in the one shared check, and nan, infinities,
    0, a negative and huge values are refused naming the flag unless the Range accepts them; the tool
    runs the check (an out-of-range value of its first flag stops it with one line, exit 2)."""
    script = f"{ROOT}/tools/{tool}.py"
    completed = subprocess.run([sys.executable, "-c", ENUMERATE, script], capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    assert results and not [case for case, outcome in results.items() if outcome not in ("accepted", "refused")]
    assert not [case for case, outcome in results.items() if outcome == "accepted" and
                any(huge in case for huge in ("=nan", "=inf", "=-inf", "=1e+300", f"={2**62}"))]


@pytest.mark.parametrize("arguments", [["linear_probe", "--lrs=nan"], ["linear_probe", "--momentum=nan"],
                                       ["linear_probe", "--knn_temperature=nan"], ["finetune", "--lr=nan"],
                                       ["finetune", "--lr=inf"], ["finetune", "--weight_decay=nan"],
                                       ["visualize_clusters", f"--samples={2**62}"],
                                       ["make_shapes", "--size=0"], ["launch_local", "--workers=100000"],
                                       ["benchmark_clustering", "--niter=0"]])
def test_a_tool_given_a_number_out_of_range_stops_with_one_line(arguments):
    """Class 5: today linear_probe and finetune exit 0 with chance-level results on nan."""
    tool, flag = arguments
    base = {"linear_probe": ["--random_init", "--train_data=digits"], "finetune": ["--random_init",
            "--train_data=digits"], "visualize_clusters": ["--workdir=unused"], "make_shapes": ["--output=unused"]}
    completed = subprocess.run([sys.executable, f"{ROOT}/tools/{tool}.py", *base.get(tool, []), flag],
                               capture_output=True, text=True, timeout=300)
    name = flag[2:].split("=")[0]
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert completed.stderr.strip().splitlines()[-1].startswith(f"error: --{name}: "), completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize("field", [field.name for field in dataclasses.fields(Config)
                                   if type(getattr(Config(), field.name)) in (int, float)])
def test_every_numeric_setting_of_train_refuses_nan_inf_and_out_of_range_values(tiny_config, field):
    """Class 5 for tools/train.py (its flags are the Config's fields)."""
    assert field in config_lib.TRAIN_RANGES
    for value in (math.nan, math.inf, -math.inf, 0, -1, 1e300, 2**62):
        if isinstance(getattr(tiny_config, field), int) and not math.isfinite(value):
            continue  # absl refuses a non-integer for an integer flag before any check
        if value in config_lib.TRAIN_RANGES[field]:
            continue
        with pytest.raises(ConfigError) as error:
            config_lib.validate(dataclasses.replace(tiny_config, **{field: value}))
        assert error.value.flag == field


def test_a_pca_sample_below_its_dimension_or_a_dimension_above_the_features_is_refused(tiny_config):
    """Class 5: --pca_sample=1 whitened with eigenvalues at the floor; --pca_dim above the features was clamped."""
    for changes, flag in [({"pca_sample": 1}, "pca_sample"), ({"pca_dim": 300}, "pca_dim")]:
        with pytest.raises(ConfigError) as error:
            config_lib.validate(dataclasses.replace(tiny_config, **changes))
        assert error.value.flag == flag


def test_an_image_with_too_many_pixels_is_refused_from_its_header_before_decoding(tmp_path):
    """Class 4: a PNG whose header states 20000 x 20000 pixels (a few hundred bytes on disk) is never
    decoded; with a low --max_image_pixels a real 200 x 200 image is skipped and reported."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (20, 20), (index * 50, 0, 0)).save(folder / f"small_{index}.png")
    Image.new("RGB", (200, 200)).save(folder / "large.png")
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", (20000).to_bytes(4, "big") * 2 + bytes(
        [8, 2, 0, 0, 0])) + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b""))
    assert sources.image_pixels(str(folder / "bomb.png")) >= 20000 * 20000
    source = sources.load_source(str(folder), 16, max_image_pixels=10_000)
    # Nothing is decoded at start: an image is judged when it is read, its header before its pixels.
    for position, name in enumerate(source.index.names):
        payload, _ = source._read(np.int32(position))
        assert (payload == b"") == (name in ("large.png", "bomb.png")), name
    assert sorted(os.path.basename(entry) for entry in source.failed) == ["bomb.png", "large.png"]


def test_a_run_too_large_for_the_machines_memory_is_refused_before_any_work(tiny_config):
    """Class 4: --synthetic_size=10^9 ended in an OOM kill."""
    with pytest.raises(ConfigError) as error:
        train.check_settings(dataclasses.replace(tiny_config, synthetic_size=10**9))
    assert error.value.flag == "synthetic_size" and "GB" in str(error.value)


def test_training_too_large_for_the_machines_memory_on_cpus_is_refused_before_any_work(tiny_config, monkeypatch):
    """Class 4: --image_size=4096 ended in an OOM kill: the memory plan (model, slots, gradients and the
    activations of a replica's batch) is checked against the machine's memory when training on CPUs."""
    from keras_dc import memory_plan

    monkeypatch.setattr(memory_plan, "machine_bytes", lambda: 64 * 10**9)  # the same answer on any machine
    with pytest.raises(ConfigError) as error:
        train.check_settings(dataclasses.replace(tiny_config, data="digits", image_size=4096, batch_size=64))
    assert error.value.flag == "image_size" and "GB" in str(error.value) and "--batch_size" in str(error.value)
    monkeypatch.setattr(memory_plan, "machine_bytes", lambda: 10**15)
    train.check_settings(dataclasses.replace(tiny_config, data="digits", image_size=4096, batch_size=64))


def test_data_paths_compare_by_the_folder_they_name(tmp_path, monkeypatch):
    """Class 6: a trailing slash, a relative path or a link to the same folder is the same data."""
    folder = tmp_path / "images"
    folder.mkdir()
    (tmp_path / "other").mkdir()
    os.symlink(folder, tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    for same in (f"{folder}/", "images", "./images/", str(tmp_path / "link")):
        assert config_lib.same_data(str(folder), same), same
        saved = Config(workdir="w", data=str(folder))
        config_lib.check_resumable(dataclasses.replace(saved, data=same), saved, 10, 10)
    for other in (str(tmp_path / "other"), "synthetic", "digits", f"tfds:{folder}"):
        assert not config_lib.same_data(str(folder), other), other


def test_a_resume_with_fewer_epochs_than_done_is_refused_and_records_nothing(folder_run, tmp_path):
    """Class 6: it rewrote config.json and backbone.json with the lower number."""
    workdir = str(tmp_path / "run")
    shutil.copytree(folder_run.workdir, workdir)
    with pytest.raises(ConfigError) as error:
        train.train(dataclasses.replace(folder_run, workdir=workdir, epochs=2), log=lambda line: None)
    assert error.value.flag == "epochs" and "--epochs=3" in str(error.value)
    assert workdir_lib.read_run(workdir).config.epochs == 3
    assert json.load(open(os.path.join(workdir, "backbone.json")))["epochs"] == 3


def test_momentum_may_change_on_resume_either_way(tiny_config):
    """Class 6: README lets --momentum change on resume; from 0 to 0.9 the checkpoint lacked the buffers."""
    train.train(dataclasses.replace(tiny_config, epochs=1, momentum=0.0), log=lambda line: None)
    lines = []
    train.train(dataclasses.replace(tiny_config, epochs=2, momentum=0.9), log=lines.append)
    assert "resume: --momentum changed from 0.0 to 0.9; the new value applies from here on" in lines


def test_an_unsafe_backbone_is_called_refused_not_damaged(tmp_path):
    """Class 7: a .keras with a Lambda layer was reported as damaged."""
    path = str(tmp_path / "lambda.keras")
    keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: x * 2)]).save(path)
    with pytest.raises(workdir_lib.StorageError, match=r"refused: it holds an unsafe layer"):
        workdir_lib.load_backbone(path)


def test_a_failed_write_names_its_file_and_leaves_no_temporary(tmp_path):
    """Class 7: a full disk reported exit 3 without the file (the write error of a full disk names none)."""
    path = str(tmp_path / "metrics.jsonl")
    with pytest.raises(OSError) as error:
        with workdir_lib.replacing(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert error.value.filename == path and "No space left on device" in str(error.value)
    assert os.listdir(tmp_path) == []

    class FullDisk:  # what a buffered file on a full disk does when it is flushed
        def close(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as error:
        with CacheWriter(str(tmp_path / "cache.npy"), 0, 3) as writer:
            writer._file.close()
            writer._file = FullDisk()
            writer.finish()
    assert error.value.filename == str(tmp_path / "cache.npy") and error.value.errno == errno.ENOSPC


def test_a_killed_runs_feature_caches_are_removed_when_the_next_run_starts(tmp_path):
    """Class 7: a killed run's feature_cache/kdc_features_* folder stayed in the workdir."""
    workdir = str(tmp_path / "run")
    stale = os.path.join(workdir_lib.feature_cache_dir(workdir), "kdc_features_abc123")
    os.makedirs(stale)
    open(os.path.join(stale, "worker_0_raw.npy"), "wb").write(bytes(100))
    lines = []
    with workdir_lib.locked(workdir, lines.append):
        assert not os.path.exists(stale)
    assert any("removed 1 feature cache folder" in line for line in lines), lines


def test_the_tools_own_outputs_in_a_data_folder_are_not_taken_for_data(tmp_path):
    """Class 7: cluster_grids/*.png (and a workdir) inside a data folder were refused as unlisted files."""
    from PIL import Image

    folder = tmp_path / "images"
    for name in ("a/one.png", "b/two.png", "cluster_grids/largest.png", "run/cluster_grids/random.png"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20)).save(folder / name)
    (folder / "run" / ".lock").write_text("")
    source = sources.load_source(str(folder), 16)
    assert list(source.index.names) == ["a/one.png", "b/two.png"]
    assert sum("keras-dc's outputs" in entry for entry in source.unreadable) == 2


@pytest.mark.parametrize("same_size", [True, False])
def test_an_epoch_resumed_at_a_batch_yields_exactly_the_rest_of_the_epoch(same_size):
    """Class 1: the skip happens in the epoch plan (no skipped image is read), for one process, a mirrored
    strategy and each worker's shard alike; the batches left are the uninterrupted epoch's, pixel for pixel."""
    from keras_dc import data

    source = sources.synthetic_source(48, 16, seed=0)
    if not same_size:
        source = dataclasses.replace(source, sizes=np.full((48, 2), 16))
    tables = data.LabelTables(48, 48)
    rng = np.random.default_rng(0)
    tables.set_assignments(rng.integers(0, 2, 48), rng.integers(0, 4, 48), np.ones(48))
    tables.set_plan(rng.permutation(48), rng.integers(0, 4, 48), epoch=2)
    def batches(shard, skip):
        dataset = data.training_dataset(source, tables, 16, 8, rotation=True, seed=0, min_crop_scale=0.5,
                                        shard=shard, skip_batches=skip)
        assert int(dataset.cardinality()) == 48 // shard[1] // 8 - skip
        return [(images.numpy(), targets["index"].numpy()) for images, targets in dataset]

    for shard in [(0, 1), (1, 2)]:
        whole, rest = batches(shard, 0), batches(shard, 2)
        assert len(rest) == len(whole) - 2
        for (images, indices), (expected_images, expected_indices) in zip(rest, whole[2:]):
            np.testing.assert_array_equal(indices, expected_indices)
            np.testing.assert_array_equal(images, expected_images)
