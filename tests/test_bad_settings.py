"""Bad settings stop tools/train.py early with one line naming the flag, a non-zero status and no traceback."""

import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from keras_dc import config as config_lib, train
from keras_dc.config import Config, ConfigError

BASE = ["--data=synthetic", "--synthetic_size=96", "--arch=small", "--image_size=16", "--batch_size=16", "--k=8",
        "--super_clusters=2", "--epochs=1", "--verbose=0"]
TWO_CPU_REPLICAS = """
import runpy, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# name: (extra flags, text the error line must contain); {tmp} is a folder of the test. Flag syntax
# errors (the last three) stop in absl's parser, the others in keras_dc's checks.
CASES = {
    "unknown_backbone": (["--arch=resnet18"], "--arch"),
    "k_below_1": (["--k=0"], "--k"),
    "k_not_divisible_by_m": (["--k=10", "--super_clusters=4"], "--k"),
    "k_above_images": (["--k=200"], "--k"),
    "image_too_small": (["--arch=alexnet", "--image_size=32"], "--image_size"),
    "batch_not_divisible_by_replicas": (["--strategy=mirrored", "--batch_size=15"], "--batch_size"),
    "missing_data_path": (["--data={tmp}/nowhere"], "--data"),
    "empty_data_folder": (["--data={tmp}/empty"], "--data"),
    "workdir_of_other_k": (["--workdir={tmp}/other_k"], "--k"),
    "cache_over_limit": (["--max_cache_gb=0.00001"], "--max_cache_gb"),
    "eval_data_missing": (["--eval_every=1", "--eval_data={tmp}/nowhere"], "--eval_data"),
    "missing_flagfile": (["--flagfile={tmp}/missing.flags"], "flagfile"),
    "unreadable_flagfile": (["--flagfile={tmp}/empty"], "flagfile"),
    "not_a_number": (["--k=many"], "--k"),
}


def _command(name, tmp):
    flags = [flag.format(tmp=tmp) for flag in CASES[name][0]]
    train = os.path.join(ROOT, "tools", "train.py")
    launcher = ["-c", TWO_CPU_REPLICAS] if name == "batch_not_divisible_by_replicas" else []
    return [sys.executable, *launcher, train, *BASE, f"--workdir={tmp}/{name}", *flags]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case run as its own process, a few at a time (each pays TensorFlow's start-up)."""
    tmp = tmp_path_factory.mktemp("settings")
    (tmp / "empty").mkdir()
    (tmp / "other_k").mkdir()
    (tmp / "other_k" / "config.json").write_text(json.dumps({"k": 4, "data": "synthetic"}))
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        runs = {name: pool.submit(subprocess.run, _command(name, tmp), capture_output=True, text=True, timeout=300)
                for name in CASES}
    return tmp, {name: run.result() for name, run in runs.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_setting_is_one_clear_line(outcomes, name):
    tmp, completed = outcomes[0], outcomes[1][name]
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    messages = [line for line in completed.stderr.splitlines() if line.startswith(("error:", "FATAL"))]
    assert len(messages) == 1 and CASES[name][1] in messages[0], completed.stderr[-2000:]
    assert not os.path.exists(tmp / name / "checkpoints")


@pytest.mark.parametrize("changes, flag", [
    ({"seed": -1}, "seed"),
    ({"pca_sample": -5}, "pca_sample"),
    ({"verbose": 3}, "verbose"),
    ({"synthetic_size": 0}, "synthetic_size"),
    ({"strategy": "tpu"}, "strategy"),
    ({"batch_size": 0}, "batch_size"),
    ({"momentum": 1.0}, "momentum"),
    ({"data": ""}, "data"),
    ({"feature_cache_dtype": "int8"}, "feature_cache_dtype"),
    ({"max_cache_gb": -1.0}, "max_cache_gb"),
    ({"eval_every": -1}, "eval_every"),
    ({"workdir": ""}, "workdir"),
])
def test_validate_names_the_flag(tiny_config, changes, flag):
    with pytest.raises(ConfigError) as error:
        config_lib.validate(dataclasses.replace(tiny_config, **changes))
    assert error.value.flag == flag and f"--{flag}" in str(error.value)


def test_a_file_is_not_a_workdir(tiny_config, tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(ConfigError, match="--workdir: .* is not a folder"):
        config_lib.validate(dataclasses.replace(tiny_config, workdir=str(path)))


@pytest.mark.parametrize("saved, flag", [
    ({"reassign_every": 3}, "reassign_every"),
    ({"batch_size": 32}, "batch_size"),
    ({"num_images": 95}, "data"),
])
def test_resume_refuses_other_cycle_length_batch_size_or_image_count(tiny_config, tmp_path, saved, flag):
    os.makedirs(tiny_config.workdir)
    (Path(tiny_config.workdir) / "config.json").write_text(json.dumps({**dataclasses.asdict(tiny_config), **saved}))
    with pytest.raises(ConfigError) as error:
        train.check_resumable(tiny_config, num_images=96)
    assert error.value.flag == flag
    matching = dataclasses.replace(tiny_config, **{key: value for key, value in saved.items() if key != "num_images"})
    train.check_resumable(matching, num_images=saved.get("num_images", 96))


def test_an_unreadable_workdir_config_names_the_workdir(tiny_config):
    os.makedirs(tiny_config.workdir)
    (Path(tiny_config.workdir) / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="--workdir: cannot read"):
        train.check_resumable(tiny_config)


def test_default_config_is_valid(tmp_path):
    config_lib.validate(Config(workdir=str(tmp_path / "new" / "run")))
