"""Label arithmetic of the hierarchy (docs/method.md: super = 4*s + r, sub local to s)."""

import dataclasses

import numpy as np
import pytest

from keras_dc import hierarchy
from keras_dc.config import Config


def test_super_target_is_reference_ordering():
    super_ids = np.array([0, 0, 1, 2, 3])
    rotations = np.array([0, 3, 1, 2, 3])
    np.testing.assert_array_equal(hierarchy.super_target(super_ids, rotations, True), [0, 3, 5, 10, 15])
    np.testing.assert_array_equal(hierarchy.super_target(super_ids, rotations, False), super_ids)


def test_super_target_round_trip_covers_all_classes_once():
    m = 5
    s, r = np.meshgrid(np.arange(m), np.arange(4), indexing="ij")
    targets = hierarchy.super_target(s.ravel(), r.ravel(), True)
    assert sorted(targets) == list(range(hierarchy.num_super_classes(m, True)))
    np.testing.assert_array_equal(targets // 4, s.ravel())
    np.testing.assert_array_equal(targets % 4, r.ravel())


def test_global_cluster_ids_are_a_bijection():
    k, m = 12, 3
    sub_classes = hierarchy.sub_classes(k, m)
    assert sub_classes == 4
    s, z = np.meshgrid(np.arange(m), np.arange(sub_classes), indexing="ij")
    ids = hierarchy.global_cluster_ids(s.ravel(), z.ravel(), sub_classes)
    assert sorted(ids) == list(range(k))
    np.testing.assert_array_equal(ids // 4, s.ravel())
    np.testing.assert_array_equal(ids % 4, z.ravel())
    np.testing.assert_array_equal(hierarchy.local_sub_ids(ids, s.ravel(), sub_classes), z.ravel())


@pytest.mark.parametrize("k, m", [(6, 4), (3, 4), (4, 0)])
def test_sub_classes_needs_k_a_positive_multiple_of_m(k, m):
    with pytest.raises(ValueError, match="positive multiple"):
        hierarchy.sub_classes(k, m)


def test_config_counts_come_from_the_hierarchy():
    config = Config(k=12, super_clusters=3, rotation=True)
    assert (config.sub_classes, config.super_classes) == (4, 12)
    assert dataclasses.replace(config, rotation=False).super_classes == 3


def test_special_cases_class_counts():
    assert hierarchy.num_super_classes(1, False) == 1  # DeepCluster
    assert hierarchy.num_super_classes(1, True) == 4  # RotNet
    assert hierarchy.num_super_classes(4, True) == 16  # the paper's S
