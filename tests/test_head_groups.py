"""Heads owned by groups of replicas (keras_dc.head_groups): the grouped train step on 4 local workers
against the NumPy statement of the reference's update, what each replica holds, the layout's arithmetic
and the group's epoch plan."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import step_reference
from conftest import ROOT
from keras_dc import head_groups, sampling, train, workdir as workdir_lib
from keras_dc.bench import local_cluster
from keras_dc.workdir import Assignment
from test_multi_worker import TRAIN_FLAGS, _checksums, _launch

WORKERS, HEADS, BATCH = 4, 4, 12


def _batches(groups: int) -> list[tuple[np.ndarray, dict]]:
    """Two global batches of 12, 3 per worker, each worker's examples routed to its group's heads only
    (in unequal numbers), with unequal weights: what the group's input pipeline gives it."""
    rng = np.random.default_rng(groups)
    out = []
    for _ in range(2):
        routes = np.concatenate([rng.choice(list(head_groups.layout(HEADS, groups, worker, WORKERS).owned), 3)
                                 for worker in range(WORKERS)]).astype(np.int32)
        targets = {"super": routes, "sub": rng.integers(0, 6, BATCH).astype(np.int32),
                   "weight": rng.uniform(0.2, 3.0, BATCH).astype(np.float32),
                   "index": np.arange(BATCH, dtype=np.int32)}
        out.append((rng.uniform(0, 255, (BATCH, 16, 16, 3)).astype(np.float32), targets))
    return out


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory):
    """Initial state, the reference's two steps per G, and the 4 workers' states after their two steps."""
    folder = tmp_path_factory.mktemp("grouped")
    cfg = step_reference.config(str(folder), super_clusters=1)  # S = 4 heads of 6 classes
    train.configure_runtime(cfg)
    model = step_reference.build(cfg)
    initial = step_reference.state(model)
    np.savez(folder / "initial.npz", **{p: v[0] for p, v in initial.items()},
             **{p + ":momentum": v[1] for p, v in initial.items()})
    expected = {}
    for groups in (4, 2):
        batches = _batches(groups)
        np.savez(folder / f"batches_g{groups}.npz", **{f"{key}_{n}": value for n, (images, targets) in
                                                       enumerate(batches) for key, value in
                                                       {"images": images, **targets}.items()})
        step_reference.set_state(model, initial)
        for images, targets in batches:
            after = step_reference.expected_step(model, images, targets)
            step_reference.set_state(model, after)
        expected[groups] = after
    lines = []
    status = local_cluster.run_local_cluster(local_cluster.python_command(
        os.path.join(ROOT, "tests", "grouped_step_worker.py"), [str(folder)]), WORKERS, write=lines.append)
    assert status == 0, "\n".join(lines[-40:])
    holds = [json.loads(line.split("HOLDS ", 1)[1]) for line in lines if "HOLDS " in line]
    return folder, expected, holds


@pytest.mark.parametrize("variant", ["g4", "g2", "g4_blocks"])
def test_grouped_step_matches_the_reference_update(grouped_run, variant):
    """Body and super-class head: mean over all 12 examples; head j: mean over its examples, summed over
    its group only; coupled decay and momentum, after two steps. All-reducing a head over every replica
    would add another group's gradients into it. With heads stored in blocks of columns (updated one
    block after the other), the same step."""
    folder, expected, _ = grouped_run
    groups = int(variant[1])
    for worker in range(WORKERS):
        owned = head_groups.layout(HEADS, groups, worker, WORKERS).owned
        state = np.load(folder / f"state_{variant}_w{worker}.npz")
        heads = {path for path in expected[groups] if "sub_heads" in path}
        mine = {path for path in heads if int(path.rsplit("_", 1)[1]) in owned}
        assert {path for path in state.files if not path.endswith(":momentum")} == set(expected[groups]) - heads | mine
        for path in state.files:
            want = expected[groups][path.removesuffix(":momentum")][int(path.endswith(":momentum"))]
            # Relative to the variable's norm; the floor is for biases before a batch norm (no gradient but noise).
            error = np.linalg.norm(state[path] - want)
            assert error <= 1e-5 * np.linalg.norm(want) + 1e-7, f"worker {worker}: {path} is {error:.2g} away"


def test_a_replica_holds_only_its_groups_heads(grouped_run):
    _, _, holds = grouped_run
    assert sorted((h["variant"], h["worker"]) for h in holds) == [
        (v, w) for v in ("g2", "g4", "g4_blocks") for w in range(WORKERS)]
    one_head = None
    for hold in holds:
        owned = list(head_groups.layout(HEADS, hold["groups"], hold["worker"], WORKERS).owned)
        assert hold["heads"] == owned
        names = {path.rsplit("/", 1)[1] for path in hold["variables"]}
        blocks = [f"_block{b}" for b in range(3)] if hold["variant"] == "g4_blocks" else [""]  # 6 columns, 2 a block
        assert names == {f"{kind}_{head}{block}" for head in owned for block in blocks
                         for kind in ("kernel", "bias", "momentum_kernel", "momentum_bias")}
        one_head = one_head or hold["bytes"] / len(owned)
        assert hold["bytes"] == one_head * HEADS / hold["groups"]


def test_layout_and_resolution():
    assert [head_groups.layout(16, 4, replica, 8).owned for replica in (0, 1, 2, 7)] == [
        range(0, 4), range(0, 4), range(4, 8), range(12, 16)]
    assert head_groups.layout(16, 4, 3, 8).rank == 1 and head_groups.layout(16, 4, 3, 8).group_size == 2
    assert head_groups.resolve("auto", 16, 64) == 16 and head_groups.resolve("auto", 16, 24) == 8
    assert head_groups.resolve("auto", 4, 3) == 1 and head_groups.resolve("2", 4, 4) == 2
    for value, replicas in (("3", 4), ("4", 6), ("0", 4), ("two", 4)):
        with pytest.raises(head_groups.GroupError):
            head_groups.resolve(value, 4, replicas)


@pytest.mark.parametrize("rotation", [True, False])
def test_group_plan_draws_only_its_super_classes_uniformly_over_its_clusters(rotation):
    rng = np.random.default_rng(0)
    m, k = 2, 8  # 4 clusters per super-cluster, of very unequal sizes
    cluster_ids = np.concatenate([np.full(n, c) for c, n in enumerate([400, 50, 30, 20, 300, 100, 60, 40])])
    rng.shuffle(cluster_ids)
    super_ids = cluster_ids // (k // m)
    heads = m * (4 if rotation else 1)
    groups = heads // 2
    sizes = 0
    for group in range(groups):
        owned = head_groups.layout(heads, groups, group, groups).owned
        indices, turns = sampling.group_epoch_plan("uniform", super_ids, cluster_ids, k, 500, 3, 1, rotation, owned)
        targets = super_ids[indices] * (4 if rotation else 1) + turns
        assert set(np.unique(targets)) == set(owned)
        pairs = np.unique(targets * k + cluster_ids[indices], return_counts=True)[1]
        assert len(pairs) == 2 * (k // m) and pairs.max() - pairs.min() <= 1  # uniform over the group's pairs
        sizes += len(indices)
    assert sizes == 500 * groups


def test_a_killed_grouped_run_resumes_to_the_uninterrupted_assignments(tmp_path):
    """2 workers, G = 2 (each owns 4 of the 8 heads and writes its own checkpoints): SIGKILL in the middle of
    epoch 2, rerun, and every clustering equals the uninterrupted run's; all workers agree on each."""
    arguments = [*TRAIN_FLAGS, "--epochs=3", "--head_groups=2"]
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    status, lines = _launch(f"{ROOT}/tools/train.py", [*arguments, f"--workdir={whole}"])
    assert status == 0, "\n".join(lines[-30:])
    assert len(_checksums(lines, 0)) == 3 and _checksums(lines, 0) == _checksums(lines, 1)
    assert os.listdir(os.path.join(whole, "checkpoints", "group_1"))
    status, lines = _launch(f"{ROOT}/tests/fault_driver.py", ["batch", "9", "KILL", *arguments, f"--workdir={killed}"])
    assert status != 0
    status, lines = _launch(f"{ROOT}/tools/train.py", [*arguments, f"--workdir={killed}"])
    assert status == 0, "\n".join(lines[-30:])
    assert any(line.startswith("[worker 1] resuming") and "after epoch 1" in line for line in lines)
    for cycle in range(3):
        expected, actual = (Assignment.load(workdir_lib.assignment_path(folder, cycle)) for folder in (whole, killed))
        np.testing.assert_array_equal(actual.super_ids, expected.super_ids)
        np.testing.assert_array_equal(actual.sub_ids, expected.sub_ids)
    status, lines = _launch(f"{ROOT}/tools/train.py", [*arguments[:-1], "--head_groups=1", f"--workdir={killed}"])
    assert status == 2 and any("was trained with --head_groups=2, not 1" in line for line in lines)


def test_head_groups_that_do_not_fit_are_refused_naming_the_flag(tmp_path):
    """3 groups do not divide S = 8; G > 1 refuses what its update does not do (a 4-worker run is in
    test_grouped_step_matches_the_reference_update, a refused resume in the kill test)."""
    from keras_dc import config as config_lib
    from keras_dc.config import Config, ConfigError

    base = dict(workdir=str(tmp_path / "run"), k=8, super_clusters=2)
    cases = ((dict(head_groups="3"), "head_groups", "3 groups must be a positive divisor of the S=8"),
             (dict(head_groups="x"), "head_groups", "positive integer or auto"),
             (dict(head_groups="2", jit_compile=True), "jit_compile", "not supported"),
             (dict(head_groups="2", precision="mixed_float16"), "precision", "not supported"))
    for changes, flag, words in cases:
        with pytest.raises(ConfigError, match=words) as error:
            config_lib.validate(Config(**base, **changes))
        assert error.value.flag == flag


MIRRORED = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_dc import distribute, train
from keras_dc.config import Config, ConfigError
config = Config(workdir="unused", k=8, super_clusters=2, head_groups="2")
try:
    train.resolve_head_groups(config, distribute.get_strategy("mirrored"))
except ConfigError as error:
    print("REFUSED", error)
"""


def test_head_groups_on_several_devices_of_one_process_are_refused_naming_the_launcher():
    completed = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True, timeout=300)
    assert "REFUSED --head_groups: 2 groups need one replica per process" in completed.stdout, completed.stderr
    assert "launch_local.py --gpus_per_worker=1" in completed.stdout
