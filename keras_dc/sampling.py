"""Sampling uniform over pseudo-labels, or the equivalent loss weights, so that training
cannot collapse onto a few large clusters (docs/method.md, "Avoiding trivial solutions"), and the
rotations each epoch shows: the sampling policy of --sampling, which the callback only applies."""

from __future__ import annotations

import numpy as np

from keras_dc import hierarchy


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """A generator determined by (seed, epoch) alone, so a resumed run draws the same plan."""
    return np.random.default_rng([seed, epoch])


def _quotas(counts: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Split size draws over the non-empty clusters as evenly as possible: each gets
    floor(size / n) and a random subset of size % n of them gets one more."""
    nonempty = np.flatnonzero(counts > 0)
    base, extra = divmod(size, len(nonempty))
    quotas = np.zeros(len(counts), dtype=np.int64)
    quotas[nonempty] = base
    quotas[rng.choice(nonempty, size=extra, replace=False)] += 1
    return quotas


def uniform_plan(
    cluster_ids: np.ndarray, num_clusters: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Shuffled indices (int64, exactly `size`) drawing the same number of examples from
    every non-empty cluster: with replacement only from clusters smaller than their quota."""
    cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
    counts = np.bincount(cluster_ids, minlength=num_clusters)
    if len(counts) > num_clusters or counts.sum() == 0:
        raise ValueError(f"cluster ids must be in [0, {num_clusters}) and not all empty")
    quotas = _quotas(counts, size, rng)
    members = np.split(np.argsort(cluster_ids, kind="stable"), np.cumsum(counts)[:-1])
    draws = [
        rng.choice(group, size=quota, replace=quota > len(group))
        for group, quota in zip(members, quotas)
        if quota > 0
    ]
    plan = np.concatenate(draws) if draws else np.zeros(0, dtype=np.int64)
    rng.shuffle(plan)
    return plan.astype(np.int64)


def inverse_size_weights(cluster_ids: np.ndarray, num_clusters: int) -> np.ndarray:
    """Per-example float32 weights proportional to 1 / size of the example's cluster,
    normalised to mean 1: every non-empty cluster carries the same total weight."""
    cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
    counts = np.bincount(cluster_ids, minlength=num_clusters)
    if len(counts) > num_clusters:
        raise ValueError(f"cluster ids must be in [0, {num_clusters})")
    num_nonempty = np.count_nonzero(counts)
    weights = len(cluster_ids) / (num_nonempty * counts[cluster_ids].astype(np.float64))
    return weights.astype(np.float32)


def example_weights(mode: str, cluster_ids: np.ndarray, num_clusters: int) -> np.ndarray:
    """Per-example float32 loss weights of a sampling mode: inverse cluster size for "weighted",
    1 for "uniform" (the plan balances the clusters) and "none"."""
    if mode == "weighted":
        return inverse_size_weights(cluster_ids, num_clusters)
    return np.ones(len(cluster_ids), np.float32)


def epoch_plan(mode: str, cluster_ids: np.ndarray, num_clusters: int, size: int, seed: int, epoch: int,
               rotation: bool) -> tuple[np.ndarray, np.ndarray]:
    """The `size` example indices and rotations of one epoch, drawn from (seed, epoch) alone:
    uniform over clusters for "uniform", a random permutation otherwise; rotations in [0, 4)
    with rotation, else 0."""
    rng = epoch_rng(seed, epoch)
    if mode == "uniform":
        indices = uniform_plan(cluster_ids, num_clusters, size, rng)
    else:
        indices = rng.permutation(len(cluster_ids))[:size]
    rotations = np.zeros(size, np.int32)
    if rotation:
        rotations = rng.integers(0, hierarchy.NUM_ROTATIONS, size)
    return indices, rotations


def group_epoch_plan(mode: str, super_ids: np.ndarray, cluster_ids: np.ndarray, num_clusters: int, size: int,
                     seed: int, epoch: int, rotation: bool, owned: range) -> tuple[np.ndarray, np.ndarray]:
    """The `size` example indices and rotations of one epoch for a group of replicas that owns the
    super-classes `owned`: only images (and rotations) of those super-classes, uniform over the group's
    (super-class, cluster) pairs for "uniform", a random draw from them otherwise."""
    rng = np.random.default_rng([seed, epoch, owned.start])
    rotations_per_cluster = hierarchy.NUM_ROTATIONS if rotation else 1
    members, labels, rotations = [], [], []
    for position, super_class in enumerate(owned):
        super_cluster, turn = divmod(super_class, rotations_per_cluster)
        chosen = np.flatnonzero(super_ids == super_cluster)
        members.append(chosen)
        labels.append(position * num_clusters + np.asarray(cluster_ids, np.int64)[chosen])
        rotations.append(np.full(len(chosen), turn, np.int32))
    members, labels, rotations = map(np.concatenate, (members, labels, rotations))
    if mode == "uniform":
        picks = uniform_plan(labels, len(owned) * num_clusters, size, rng)
    else:
        picks = rng.choice(len(members), size=size, replace=size > len(members))
    return members[picks], rotations[picks]
