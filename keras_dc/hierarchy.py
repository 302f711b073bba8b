"""Label arithmetic of the two-level hierarchy (METHOD.md, "The hierarchy").

An image in super-cluster s and sub-cluster z (local to s), shown rotated by r,
has super-class target 4*s + r (s without rotation) and sub-class target z.
These functions work on numpy arrays and on tensors alike.
"""

from __future__ import annotations

NUM_ROTATIONS = 4


def num_super_classes(super_clusters: int, rotation: bool) -> int:
    """S = 4m with rotation, m without."""
    return super_clusters * (NUM_ROTATIONS if rotation else 1)


def super_target(super_ids, rotations, rotation: bool):
    """Super-class target of each example: 4*s + r with rotation, else s."""
    return super_ids * NUM_ROTATIONS + rotations if rotation else super_ids


def split_super_target(targets, rotation: bool):
    """Inverse of super_target: (super-cluster, rotation) of each target."""
    if not rotation:
        return targets, targets * 0
    return targets // NUM_ROTATIONS, targets % NUM_ROTATIONS


def global_cluster_ids(super_ids, sub_ids, sub_classes: int):
    """Global cluster id in [0, k): super * (k/m) + sub."""
    return super_ids * sub_classes + sub_ids


def split_cluster_ids(cluster_ids, sub_classes: int):
    """Inverse of global_cluster_ids: (super-cluster, local sub-cluster)."""
    return cluster_ids // sub_classes, cluster_ids % sub_classes
