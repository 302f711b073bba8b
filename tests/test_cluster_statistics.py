"""Tests for keras_dc.cluster_statistics: image statistics, their codes and their NMI with clusters."""

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from keras_dc import cluster_statistics


def _square_image(row: int, column: int, size: int = 24, side: int = 6, colour=(200.0, 40.0, 10.0)) -> np.ndarray:
    """A black image with one filled square whose top-left corner is at (row, column)."""
    image = np.zeros((size, size, 3))
    image[row:row + side, column:column + side] = colour
    return image


def test_raw_statistics_match_their_definitions():
    flat = np.full((1, 24, 24, 3), (30.0, 60.0, 90.0))
    square = _square_image(2, 14)[None]
    raw = cluster_statistics.raw_statistics(np.concatenate([flat, square]))
    np.testing.assert_allclose(raw["mean_colour"], [(30.0, 60.0, 90.0), np.array((200.0, 40.0, 10.0)) * 36 / 576])
    np.testing.assert_allclose(raw["brightness"], [60.0, 250.0 / 3 * 36 / 576])
    rows, columns = np.gradient(square[0].mean(-1))
    np.testing.assert_allclose(raw["edge_energy"], [0.0, np.hypot(rows, columns).mean()])
    # The square spans rows 2-7 and columns 14-19 of 24: its edges centre on (5, 17) / 24.
    np.testing.assert_allclose(raw["edge_centre"][1], [5.0 / 24, 17.0 / 24], atol=0.02)


@pytest.mark.parametrize("row, column, cell", [(1, 1, 0), (1, 17, 2), (9, 9, 4), (17, 1, 6), (17, 17, 8)])
def test_edge_centre_code_is_the_grid_cell_of_the_edges(row, column, cell):
    images = np.stack([_square_image(row, column)] * 3 + [_square_image(9, 9, colour=(10.0, 40.0, 200.0))] * 3)
    codes = cluster_statistics.statistic_codes(cluster_statistics.raw_statistics(images), bins=2)
    assert codes["edge_centre"][:3].tolist() == [cell] * 3 and codes["edge_centre"][3:].tolist() == [4] * 3


def test_clusters_that_follow_brightness_score_high_on_it_and_low_elsewhere():
    rng = np.random.default_rng(0)
    levels = rng.permutation(np.repeat(np.arange(4), 100))
    # Brightness from the cluster, edge position and colour hue at random.
    images = np.stack([_square_image(*rng.integers(0, 18, 2), colour=rng.uniform(0.5, 1.5, 3) * 20)
                       + 50.0 * level for level in levels])
    codes = cluster_statistics.statistic_codes(cluster_statistics.raw_statistics(images), bins=4)
    nmi = cluster_statistics.nmi_with(levels, codes, labels=levels)
    assert nmi["labels"] == pytest.approx(1.0)
    assert nmi["brightness"] > 0.9 and nmi["edge_centre"] < 0.1
    assert nmi["brightness"] == pytest.approx(normalized_mutual_info_score(codes["brightness"], levels))


def test_quantile_codes_fill_the_bins_equally_and_cluster_sizes_skip_empty_clusters():
    codes = cluster_statistics.quantile_codes(np.random.default_rng(1).normal(size=1000), 10)
    assert np.bincount(codes).tolist() == [100] * 10
    assert cluster_statistics.cluster_sizes(np.array([0, 0, 0, 5, 5, 9])) == {
        "clusters": 3, "min": 1, "median": 2.0, "max": 3}
