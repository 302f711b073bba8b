"""The benchmark's arithmetic; its smoke run (every figure in its JSON, timings never asserted) is run by the
installed console script in tests/test_install.py."""


def test_forward_flops_of_a_known_network():
    import keras_dc  # noqa: F401
    import keras

    from keras_dc.bench.benchmark import forward_flops

    image = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(image)
    x = keras.layers.Flatten()(x)
    model = keras.Model(image, keras.layers.Dense(5)(x))
    assert forward_flops(model) == 2 * 8 * 8 * 4 * 3 * 3 * 3 + 2 * (8 * 8 * 4) * 5
