"""The views' resizing and crop boxes against the reference's (PIL's antialiased resize, torchvision's
RandomResizedCrop), reimplemented here in NumPy."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from keras_dc import data

DRAWS = 20000


def _checkerboard(side: int, cell: int) -> np.ndarray:
    rows, cols = np.meshgrid(np.arange(side) // cell, np.arange(side) // cell, indexing="ij")
    return np.repeat((((rows + cols) % 2) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def test_a_2_pixel_checkerboard_shrunk_8x_is_grey_in_both_views():
    """Point sampling gives black and white (aliasing); an antialiased resize averages every cell."""
    board = _checkerboard(256, 2)
    center = data.center_view(tf.constant(board), 28).numpy()  # shorter side 256 -> 32, centre 28
    seed = tf.constant([0, 1], tf.int64)  # the whole image: no smaller box can cover all of it
    one, batch = data.random_crops(board, 32, seed, 1.0), data.random_crops(board[None], 32, seed, 1.0)
    for view in (center, one.numpy(), batch.numpy()):
        assert np.abs(view - 127.5).max() < 2.0, (view.min(), view.max())


def test_a_box_of_the_output_size_is_copied_and_an_integer_shrink_is_the_pixel_mean():
    images = np.random.default_rng(0).integers(0, 256, (2, 20, 30, 3)).astype(np.float32)
    boxes = tf.constant([[2.0, 3.0, 16.0, 16.0], [4.0, 10.0, 16.0, 16.0]])
    np.testing.assert_allclose(data.resized_boxes(images, boxes, 16).numpy(),
                               np.stack([images[0, 2:18, 3:19], images[1, 4:20, 10:26]]), atol=1e-3)
    shrunk = data.resized_boxes(images, tf.constant([[1.0, 2.0, 18.0, 18.0]] * 2), 6).numpy()
    means = images[:, 1:19, 2:20].reshape(2, 6, 3, 6, 3, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(shrunk, means, atol=1e-2)


def test_an_enlarged_box_takes_nothing_from_outside_the_image():
    images = np.full((1, 8, 8, 3), 200, np.uint8)
    for box in ([0.0, 0.0, 4.0, 4.0], [4.0, 4.0, 4.0, 4.0]):
        np.testing.assert_allclose(data.resized_boxes(images, tf.constant([box]), 16).numpy(), 200.0, atol=1e-3)
        np.testing.assert_allclose(data.resized_crop(images[0], tf.constant(box), 16).numpy(), 200.0, atol=1e-3)


def test_one_image_is_cut_out_and_resized_as_pil_would():
    """tf.image.resize's antialias is PIL's filter: the single-image path against PIL itself."""
    import PIL.Image

    image = np.random.default_rng(1).integers(0, 256, (60, 90, 3)).astype(np.uint8)
    ours = data.resized_crop(image, tf.constant([5.0, 10.0, 48.0, 64.0]), 16).numpy()
    theirs = np.asarray(PIL.Image.fromarray(image[5:53, 10:74]).resize((16, 16), PIL.Image.BILINEAR), np.float32)
    assert np.abs(ours - theirs).max() < 1.5


def _torchvision_boxes(height: int, width: int, scale: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """RandomResizedCrop.get_params (torchvision), one box (top, left, height, width) at a time."""
    boxes = []
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(count):
        for _ in range(10):
            target_area = height * width * rng.uniform(scale, 1.0)
            aspect = math.exp(rng.uniform(*log_ratio))
            w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                boxes.append((rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w))
                break
        else:
            in_ratio = width / height
            if in_ratio < 3 / 4:
                w, h = width, int(round(width / (3 / 4)))
            elif in_ratio > 4 / 3:
                h, w = height, int(round(height * (4 / 3)))
            else:
                w, h = width, height
            boxes.append(((height - h) // 2, (width - w) // 2, h, w))
    return np.array(boxes, np.float64)


@pytest.mark.parametrize("height,width", [(64, 64), (64, 128)])
def test_crop_boxes_are_distributed_as_torchvision_random_resized_crop(height, width):
    """Two-sample Kolmogorov-Smirnov distances of area, aspect and place against torchvision's formula.

    The critical distance at 0.1% for two samples of 20,000 is 0.0195; the former clipped-aspect boxes
    were 0.114 away in area on the square image (27% of them over 3/4 of it, torchvision's 16%)."""
    ours = data.crop_boxes(tf.constant([7, 11], tf.int64), tf.fill([DRAWS], height), tf.fill([DRAWS], width),
                           0.08).numpy().astype(np.float64)
    theirs = _torchvision_boxes(height, width, 0.08, DRAWS, np.random.default_rng(0))
    for boxes in (ours, theirs):
        assert np.all(boxes[:, 0] + boxes[:, 2] <= height) and np.all(boxes[:, 1] + boxes[:, 3] <= width)
        assert np.all(boxes >= 0) and np.all(boxes == np.round(boxes))

    def figures(boxes):
        return {"area": boxes[:, 2] * boxes[:, 3] / (height * width), "aspect": boxes[:, 3] / boxes[:, 2],
                "top": (boxes[:, 0] + 0.5) / (height - boxes[:, 2] + 1),
                "left": (boxes[:, 1] + 0.5) / (width - boxes[:, 3] + 1)}

    for name, (a, b) in {key: (figures(ours)[key], figures(theirs)[key]) for key in figures(ours)}.items():
        assert stats.ks_2samp(a, b).statistic < 0.0195, name
    large = [np.mean(figures(boxes)["area"] > 0.75) for boxes in (ours, theirs)]
    assert abs(large[0] - large[1]) < 0.01, large


def test_a_box_that_never_fits_falls_back_to_the_centre_crop_of_the_clipped_aspect():
    """A 1:4 image with only large areas: every draw is too wide, so the centre 3:4 crop of full width."""
    boxes = data.crop_boxes(tf.constant([1, 2], tf.int64), tf.constant([40, 40]), tf.constant([10, 10]),
                            0.99).numpy()
    np.testing.assert_array_equal(boxes, [[13.0, 0.0, 13.0, 10.0]] * 2)
