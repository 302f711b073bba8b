"""Label arithmetic of the two-level hierarchy (docs/method.md, "The hierarchy"): the only place that
knows S, k/m and how (super-cluster, sub-cluster, rotation) become targets and cluster ids.

An image in super-cluster s and sub-cluster z (local to s), shown rotated by r,
has super-class target 4*s + r (s without rotation), sub-class target z and
global cluster id s * (k/m) + z. These functions work on numpy arrays and on
tensors alike.
"""

from __future__ import annotations

NUM_ROTATIONS = 4


def sub_classes(k: int, super_clusters: int) -> int:
    """k/m, the sub-clusters of each super-cluster; a ValueError unless k is a positive multiple of m."""
    if super_clusters < 1 or k < super_clusters or k % super_clusters:
        raise ValueError(f"k={k} must be a positive multiple of m={super_clusters}")
    return k // super_clusters


def num_super_classes(super_clusters: int, rotation: bool) -> int:
    """S = 4m with rotation, m without."""
    return super_clusters * (NUM_ROTATIONS if rotation else 1)


def images_per_super_cluster(num_images: int, super_clusters: int) -> int:
    """How many images a super-cluster holds on average (rounded down)."""
    return num_images // super_clusters


def super_target(super_ids, rotations, rotation: bool):
    """Super-class target of each example: 4*s + r with rotation, else s."""
    return super_ids * NUM_ROTATIONS + rotations if rotation else super_ids


def global_cluster_ids(super_ids, sub_ids, sub_classes: int):
    """Global cluster id in [0, k): super * (k/m) + sub."""
    return super_ids * sub_classes + sub_ids


def local_sub_ids(cluster_ids, super_ids, sub_classes: int):
    """Inverse of global_cluster_ids given the super-clusters: each id's sub-cluster within its super-cluster."""
    return cluster_ids - super_ids * sub_classes
