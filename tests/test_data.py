"""Input pipelines: stable indices, label lookups from the tables, the two views."""

import numpy as np
import tensorflow as tf

from keras_dc import data, hierarchy
from keras_dc.sources import ImageSource, folder_source, in_memory_source, synthetic_source


def _asymmetric_source(num_images=6, size=12):
    """Images whose pixel (0, 0) quadrant is bright, so rotations and flips are recognisable."""
    images = np.zeros((num_images, size, size, 3), np.uint8)
    images[:, : size // 2, : size // 3] = 200
    for n in range(num_images):
        images[n, -1, -1] = n  # a per-image mark
    return ImageSource("test", num_images, images=images, labels=np.arange(num_images) % 2)


def _first_epoch(dataset):
    images, targets = [], []
    for batch_images, batch_targets in dataset:
        images.append(batch_images.numpy())
        targets.append({key: value.numpy() for key, value in batch_targets.items()})
    return np.concatenate(images), {key: np.concatenate([t[key] for t in targets]) for key in targets[0]}


def test_targets_are_lookups_of_the_tables_for_each_index():
    source = synthetic_source(40, 16, seed=0)
    tables = data.LabelTables(40, 40)
    rng = np.random.default_rng(0)
    super_ids, sub_ids = rng.integers(0, 3, 40), rng.integers(0, 5, 40)
    weights = rng.uniform(0.5, 2, 40).astype(np.float32)
    tables.set_assignments(super_ids, sub_ids, weights)
    plan, rotations = rng.permutation(40), rng.integers(0, 4, 40)
    tables.set_plan(plan, rotations, epoch=3)
    dataset = data.training_dataset(source, tables, 16, 8, rotation=True, seed=0, min_crop_scale=0.5)
    _, targets = _first_epoch(dataset)
    np.testing.assert_array_equal(targets["index"], plan)
    np.testing.assert_array_equal(targets["super"], hierarchy.super_target(super_ids[plan], rotations, True))
    np.testing.assert_array_equal(targets["sub"], sub_ids[plan])
    np.testing.assert_allclose(targets["weight"], weights[plan])


def test_a_new_plan_and_new_labels_reach_the_next_iteration():
    source = synthetic_source(16, 16)
    tables = data.LabelTables(16, 16)
    dataset = data.training_dataset(source, tables, 16, 4, rotation=False, seed=0, min_crop_scale=0.5)
    _, before = _first_epoch(dataset)
    tables.set_assignments(np.arange(16) % 2, np.arange(16) // 2, np.ones(16))
    tables.set_plan(np.arange(16)[::-1], np.zeros(16), epoch=1)
    _, after = _first_epoch(dataset)
    assert np.all(before["super"] == 0)
    np.testing.assert_array_equal(after["index"], np.arange(16)[::-1])
    np.testing.assert_array_equal(after["sub"], after["index"] // 2)


def test_rotation_is_applied_to_the_training_view():
    source = _asymmetric_source()
    tables = data.LabelTables(6, 24)
    plan = np.repeat(np.arange(6), 4)
    rotations = np.tile(np.arange(4), 6)
    tables.set_plan(plan, rotations, epoch=0)
    dataset = data.training_dataset(source, tables, 12, 24, rotation=True, seed=1, min_crop_scale=1.0)
    images, targets = _first_epoch(dataset)
    for image, index, rot in zip(images, targets["index"], rotations):
        original = source.images[index].astype(np.float32)
        candidates = [np.rot90(original, rot), np.rot90(original[:, ::-1], rot)]
        assert min(np.abs(image - c).max() for c in candidates) < 1e-3
    assert set(targets["super"] % 4) == {0, 1, 2, 3}


def test_training_view_is_reproducible_for_the_same_epoch_and_differs_across_epochs():
    source = synthetic_source(16, 16)
    tables = data.LabelTables(16, 16)
    dataset = data.training_dataset(source, tables, 16, 16, rotation=False, seed=0, min_crop_scale=0.2)
    first, _ = _first_epoch(dataset)
    again, _ = _first_epoch(dataset)
    tables.set_plan(np.arange(16), np.zeros(16), epoch=1)
    other, _ = _first_epoch(dataset)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_clustering_view_keeps_index_order_and_centre_crops():
    source = _asymmetric_source(num_images=7, size=16)
    images = np.concatenate([b.numpy() for b in data.clustering_dataset(source, 14, batch_size=3)])
    assert images.shape == (7, 14, 14, 3)
    for n in range(7):
        expected = data.center_view(tf.constant(source.images[n]), 14).numpy()
        np.testing.assert_array_equal(images[n], expected)


def test_center_view_of_a_wide_image_is_square_and_centred():
    image = np.zeros((20, 60, 3), np.uint8)
    image[:, 28:32] = 255  # a vertical bar in the middle
    view = data.center_view(tf.constant(image), 16).numpy()
    assert view.shape == (16, 16, 3)
    column_mass = view[..., 0].sum(axis=0)
    assert abs(np.argmax(column_mass) - 7.5) <= 1.5


def _checkerboard(height, width, cell=6):
    rows, cols = np.meshgrid(np.arange(height) // cell, np.arange(width) // cell, indexing="ij")
    return np.repeat((((rows + cols) % 2) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _width_over_height(view):
    """How many checkerboard cells a view spans across over how many it spans down: the crop's aspect
    ratio in the original image's pixels (cells are square there), whatever the view's own shape."""
    dark = view[..., 0] > 127.5
    across = np.mean(np.sum(dark[:, 1:] != dark[:, :-1], axis=1))
    down = np.mean(np.sum(dark[1:] != dark[:-1], axis=0))
    return across / down


def _views(source, num_images):
    tables = data.LabelTables(num_images, 64)
    tables.set_plan(np.arange(64) % num_images, np.zeros(64, np.int32), epoch=0)
    dataset = data.training_dataset(source, tables, 64, 16, rotation=False, seed=3, min_crop_scale=0.5,
                                    flip=False)
    return _first_epoch(dataset)[0]


def test_a_2_to_1_image_is_cropped_not_squashed(tmp_path):
    """Crops of a wide (file) or tall (in memory, padded) image keep square cells square, up to the
    random resized crop's own aspect range [3/4, 4/3]; squashing the image first would give 1.5 to 2.7."""
    import PIL.Image

    PIL.Image.fromarray(_checkerboard(120, 240)).save(tmp_path / "wide.png")
    sources = {"folder": folder_source(str(tmp_path)),
               "in memory": in_memory_source("test", [_checkerboard(120, 240), _checkerboard(240, 120)], None)}
    for name, source in sources.items():
        ratios = [_width_over_height(view) for view in _views(source, source.num_images)]
        assert 0.75 / 1.1 < min(ratios) and max(ratios) < 4 / 3 * 1.1, (name, min(ratios), max(ratios))
        assert max(ratios) / min(ratios) > 1.2, "the aspect ratio of the crops never varied"


def test_the_parallel_listing_finds_what_os_walk_finds(tmp_path):
    """Files at the top, in sub-folders at several depths, a link to a folder (reported, not followed),
    names of other extensions (ignored): the threaded scan gives os.walk's files, sizes and order."""
    import os

    from keras_dc import sources

    for number, name in enumerate(["top.png", "a/1.jpg", "a/b/c/2.PNG", "a/b/3.txt", "d/4.gif", "a.b/5.png"]):
        path = tmp_path / "root" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (number + 1))
    os.symlink(tmp_path / "root" / "a", tmp_path / "root" / "d" / "link")
    found, skipped = sources.scan_folder(str(tmp_path / "root"), 2**20)
    expected = {}
    for folder, _, names in os.walk(tmp_path / "root"):
        for name in names:
            if name.lower().endswith(sources.IMAGE_EXTENSIONS):
                path = os.path.join(folder, name)
                expected[os.path.relpath(path, tmp_path / "root")] = os.path.getsize(path)
    assert found == expected and len(found) == 5
    assert sorted(found) == ["a.b/5.png", "a/1.jpg", "a/b/c/2.PNG", "d/4.gif", "top.png"]
    assert skipped == [f"{tmp_path / 'root' / 'd' / 'link'} (link to a folder, not followed)"]
