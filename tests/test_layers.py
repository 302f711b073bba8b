"""Tests for keras_dc.layers against numpy / scipy.signal references."""

import numpy as np
import pytest
from scipy import signal

import keras_dc  # noqa: F401
import keras

from keras_dc.layers import IMAGENET_MEAN, IMAGENET_STD, normalized_input, padded_input

# Written out independently of keras_dc.layers: Sobel x (row [1, 0, -1] weighted
# 1, 2, 1 down the rows) and its transpose, applied as cross-correlation.
SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64)
SOBEL_Y = SOBEL_X.T


def _images(shape=(2, 7, 9, 3), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


def _reference_front_end(images, padding, sobel):
    """Per image: zero padding, then the mean of R, G, B and 'valid' cross-correlation with each kernel."""
    padded = np.pad(images.astype(np.float64), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    if not sobel:
        return padded
    grey = padded.mean(axis=-1)
    return np.stack([np.stack([signal.correlate2d(g, k, mode="valid") for k in (SOBEL_X, SOBEL_Y)], -1)
                     for g in grey])


def _front_end(padding, sobel, shape=(7, 9, 3)):
    inputs = keras.Input(shape)
    return keras.Model(inputs, padded_input(inputs, padding, sobel))


def _normalizer(mean=IMAGENET_MEAN, std=IMAGENET_STD, shape=(7, 9, 3)):
    inputs = keras.Input(shape)
    return keras.Model(inputs, normalized_input(inputs, mean, std))


def test_normalization_is_the_earlier_layers_arithmetic_to_the_last_bit():
    """(x / 255 - mean) / std as TensorFlow's graph optimiser ran the custom layer of earlier exports:
    each division by a constant a multiplication by its float32 reciprocal, eagerly and in a graph."""
    x = np.concatenate([np.arange(256, dtype=np.float32), _images(shape=(1000,))])[None, :, None, None].repeat(3, -1)
    one = np.float32(1.0)
    expected = (x * (one / np.float32(255.0)) - np.float32(IMAGENET_MEAN)) * (one / np.float32(IMAGENET_STD))
    model = _normalizer(shape=x.shape[1:])
    np.testing.assert_array_equal(np.asarray(model(x)), expected)
    np.testing.assert_array_equal(model.predict(x, verbose=0), expected)
    formula = (x.astype(np.float64) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(expected, formula, rtol=0, atol=1e-6)


def test_normalization_custom_statistics():
    x = _images(shape=(1, 3, 3, 2))
    expected = (x / 255.0 - np.array([0.5, 0.1])) / np.array([0.25, 2.0])
    out = np.asarray(_normalizer((0.5, 0.1), (0.25, 2.0), (3, 3, 2))(x))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_normalization_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="same length"):
        normalized_input(keras.Input((4, 4, 3)), mean=(0.5, 0.5, 0.5), std=(1.0, 1.0))


@pytest.mark.parametrize("padding", [0, 1])
def test_sobel_front_end_is_the_references(padding):
    """Pad by padding + 1, grey = mean of RGB, 'valid' Sobel: the spatial size grows by 2 * padding."""
    x = _images()
    out = np.asarray(_front_end(padding, sobel=True)(x))
    assert out.shape == (2, 7 + 2 * padding, 9 + 2 * padding, 2)
    expected = _reference_front_end(x, padding + 1, sobel=True)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-2)
    # Sobel kernels are antisymmetric, so true convolution would flip the sign.
    assert not np.allclose(out, -expected, atol=1.0)


def test_front_end_without_sobel_only_pads():
    x = _images()
    np.testing.assert_array_equal(np.asarray(_front_end(1, sobel=False)(x)), _reference_front_end(x, 1, False))


def test_sobel_channel_order_on_a_horizontal_ramp():
    ramp = np.tile(np.arange(8, dtype=np.float32), (6, 1))  # grows along columns
    x = np.repeat(ramp[None, :, :, None], 3, axis=-1)
    out = np.asarray(_front_end(0, True, (6, 8, 3))(x))[0, 1:-1, 1:-1]
    np.testing.assert_allclose(out[..., 0], -8.0, rtol=1e-5)  # left minus right, weights 1+2+1, step 2
    np.testing.assert_allclose(out[..., 1], 0.0, atol=1e-5)


def test_front_end_has_no_trainable_weights():
    model = _front_end(1, sobel=True)
    assert model.trainable_weights == [] and len(model.non_trainable_weights) == 4


def test_model_with_the_front_end_round_trips_through_keras_file(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = padded_input(normalized_input(inputs, mean=(0.4, 0.4, 0.4)), 1, sobel=True)
    model = keras.Model(inputs, keras.layers.Conv2D(3, 3, name="conv")(x))
    path = tmp_path / "x.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    x = _images(shape=(2, 8, 8, 3))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    expected = [keras.layers.Rescaling] * 3 + [keras.layers.ZeroPadding2D]
    assert [type(layer) for layer in loaded.layers[1:5]] == expected
