"""Tests for keras_dc.layers against numpy / scipy.signal references."""

import numpy as np
import pytest
from scipy import signal

import keras_dc  # noqa: F401
import keras

from keras_dc.layers import GreySobel, ImageNormalization

# Written out independently of keras_dc.layers: Sobel x (row [1, 0, -1] weighted
# 1, 2, 1 down the rows) and its transpose, applied as cross-correlation.
SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64)
SOBEL_Y = SOBEL_X.T


def _images(shape=(2, 7, 9, 3), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


def _reference_grey_sobel(images, grey_weights=(0.299, 0.587, 0.114)):
    """Per image: weighted grey, then zero-padded 'same' cross-correlation with each kernel."""
    grey = images.astype(np.float64) @ np.asarray(grey_weights)
    return np.stack(
        [
            np.stack([signal.correlate2d(g, k, mode="same", boundary="fill") for k in (SOBEL_X, SOBEL_Y)], -1)
            for g in grey
        ]
    )


def test_normalization_matches_numpy():
    x = _images()
    expected = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(np.asarray(ImageNormalization()(x)), expected, rtol=1e-5, atol=1e-5)


def test_normalization_custom_statistics():
    x = _images(shape=(1, 3, 3, 2))
    layer = ImageNormalization(mean=(0.5, 0.1), std=(0.25, 2.0))
    expected = (x / 255.0 - np.array([0.5, 0.1])) / np.array([0.25, 2.0])
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-5, atol=1e-5)


def test_normalization_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="same length"):
        ImageNormalization(mean=(0.5, 0.5, 0.5), std=(1.0, 1.0))


def test_grey_sobel_is_cross_correlation_with_reference_kernels():
    x = _images()
    out = np.asarray(GreySobel()(x))
    assert out.shape == (2, 7, 9, 2)
    expected = _reference_grey_sobel(x)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-2)
    # Sobel kernels are antisymmetric, so true convolution would flip the sign.
    assert not np.allclose(out, -expected, atol=1.0)


def test_grey_sobel_custom_grey_weights():
    x = _images(shape=(1, 5, 6, 3), seed=1)
    weights = (1 / 3, 1 / 3, 1 / 3)
    out = np.asarray(GreySobel(grey_weights=weights)(x))
    np.testing.assert_allclose(out, _reference_grey_sobel(x, weights), rtol=1e-4, atol=1e-2)


def test_grey_sobel_channel_order_on_a_horizontal_ramp():
    ramp = np.tile(np.arange(8, dtype=np.float32), (6, 1))  # grows along columns
    x = np.repeat(ramp[None, :, :, None], 3, axis=-1)
    out = np.asarray(GreySobel()(x))[0, 1:-1, 1:-1]
    np.testing.assert_allclose(out[..., 0], -8.0, rtol=1e-5)  # left minus right, weights 1+2+1, step 2
    np.testing.assert_allclose(out[..., 1], 0.0, atol=1e-5)


def test_grey_sobel_constant_image_is_zero_away_from_border():
    x = np.full((1, 6, 7, 3), 100.0, dtype=np.float32)
    out = np.asarray(GreySobel()(x))[0]
    np.testing.assert_allclose(out[1:-1, 1:-1], 0.0, atol=1e-4)
    assert np.abs(out[0, 1:-1, 1]).min() > 1.0  # the zero padding shows at the border


@pytest.mark.parametrize("layer", [ImageNormalization(), GreySobel()], ids=["norm", "sobel"])
def test_layers_have_no_weights(layer):
    layer(_images(shape=(1, 4, 4, 3)))
    assert layer.weights == []
    assert layer.trainable_weights == []
    assert not layer.trainable


def test_from_config_round_trip():
    norm = ImageNormalization(mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 3.0), name="n")
    sobel = GreySobel(grey_weights=(0.2, 0.3, 0.5), name="s")
    norm2 = ImageNormalization.from_config(norm.get_config())
    sobel2 = GreySobel.from_config(sobel.get_config())
    assert (norm2.mean, norm2.std, norm2.name) == (norm.mean, norm.std, "n")
    assert (sobel2.grey_weights, sobel2.name) == (sobel.grey_weights, "s")


def test_model_with_both_layers_round_trips_through_keras_file(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = GreySobel(grey_weights=(0.5, 0.25, 0.25))(ImageNormalization(mean=(0.4, 0.4, 0.4))(inputs))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 3, name="conv")(x))
    path = tmp_path / "x.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    x = _images(shape=(2, 8, 8, 3))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert [type(layer) for layer in loaded.layers[1:3]] == [ImageNormalization, GreySobel]
    assert loaded.layers[2].grey_weights == (0.5, 0.25, 0.25)
