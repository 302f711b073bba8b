"""Label arithmetic of the hierarchy (docs/method.md: super = 4*s + r, sub local to s)."""

import numpy as np

from keras_dc import hierarchy


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
    back_s, back_r = hierarchy.split_super_target(targets, True)
    np.testing.assert_array_equal(back_s, s.ravel())
    np.testing.assert_array_equal(back_r, r.ravel())


def test_global_cluster_ids_are_a_bijection():
    k, m = 12, 3
    sub_classes = k // m
    s, z = np.meshgrid(np.arange(m), np.arange(sub_classes), indexing="ij")
    ids = hierarchy.global_cluster_ids(s.ravel(), z.ravel(), sub_classes)
    assert sorted(ids) == list(range(k))
    back_s, back_z = hierarchy.split_cluster_ids(ids, sub_classes)
    np.testing.assert_array_equal(back_s, s.ravel())
    np.testing.assert_array_equal(back_z, z.ravel())


def test_special_cases_class_counts():
    assert hierarchy.num_super_classes(1, False) == 1  # DeepCluster
    assert hierarchy.num_super_classes(1, True) == 4  # RotNet
    assert hierarchy.num_super_classes(4, True) == 16  # the paper's S
