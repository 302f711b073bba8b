"""Tests for keras_dc.backbones: shapes, parameter counts, names, seeding, saving, sync BN."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras_dc  # noqa: F401
import keras

from keras_dc.backbones import (
    FEATURE_DIM,
    MIN_IMAGE_SIZE,
    build_backbone,
    conv_tap_layers,
    validate_architecture,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FC_ARCHS = ("small", "alexnet", "vgg16_bn")  # the fc6/fc7 bodies; ResNet-50 has tests/test_resnet.py
VGG16_WIDTHS = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


def _run_python(code: str) -> dict:
    """Run `code` in a fresh interpreter at the repository root; parse its last stdout line as JSON."""
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,  # a hang guard only
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _images(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def _final_spatial(arch, size):
    """Spatial side after the last pool, from torch's floor-mode output-size formulas."""
    if arch == "alexnet":
        size = (size + 2 * 2 - 11) // 4 + 1
        for _ in range(3):
            size = (size - 3) // 2 + 1
        return size
    return (size + 2) // 2 ** (3 if arch == "small" else 5)  # the reference pads the input by 1


@pytest.mark.parametrize("arch", FC_ARCHS)
@pytest.mark.parametrize("size_kind", ["min", "64"])
def test_output_shape_and_dtype(arch, size_kind):
    size = MIN_IMAGE_SIZE[arch] if size_kind == "min" else 64
    model = build_backbone(arch, size)
    assert model.input.name == "image"
    assert tuple(model.input.shape) == (None, size, size, 3)
    features = model.predict(_images(2, size), verbose=0)
    assert features.shape == (2, FEATURE_DIM[arch])
    assert features.dtype == np.float32
    channels = {"small": 128, "alexnet": 256, "vgg16_bn": 512}[arch]
    assert model.get_layer("flatten").output.shape[-1] == channels * _final_spatial(arch, size) ** 2


@pytest.mark.parametrize("arch", FC_ARCHS)
def test_min_image_size_is_the_smallest_that_fits(arch):
    assert _final_spatial(arch, MIN_IMAGE_SIZE[arch]) == 1
    assert _final_spatial(arch, MIN_IMAGE_SIZE[arch] - 1) == 0
    validate_architecture(arch, MIN_IMAGE_SIZE[arch])
    with pytest.raises(ValueError, match=f"minimum is {MIN_IMAGE_SIZE[arch]}"):
        build_backbone(arch, MIN_IMAGE_SIZE[arch] - 1)


def test_odd_sizes_build():
    for arch, size in [("small", 37), ("alexnet", 100), ("vgg16_bn", 45)]:
        model = build_backbone(arch, size)
        assert model.output.shape == (None, FEATURE_DIM[arch])


def test_validate_rejects_unknown_architecture():
    with pytest.raises(ValueError, match="expected one of"):
        validate_architecture("resnet18", 224)


def test_vgg16_bn_parameter_counts_at_224():
    model = build_backbone("vgg16_bn", 224)
    assert model.get_layer("flatten").output.shape[-1] == 7 * 7 * 512
    convs = [layer for layer in model.layers if "_conv" in layer.name]
    bns = [layer for layer in model.layers if "_bn" in layer.name]
    assert len(convs) == len(bns) == 13
    pairs = list(zip([3] + sum(VGG16_WIDTHS, [])[:-1], sum(VGG16_WIDTHS, [])))
    assert sum(layer.count_params() for layer in convs) == sum(9 * i * o + o for i, o in pairs) == 14_714_688
    assert sum(layer.count_params() for layer in bns) == sum(4 * o for _, o in pairs)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    fc = (25088 * 4096 + 4096) + (4096 * 4096 + 4096)
    # torchvision's vgg16_bn has 138,365,992 parameters; less its fc8 (4096 x 1000 + 1000).
    assert trainable == 14_714_688 + sum(2 * o for _, o in pairs) + fc == 138_365_992 - 4_097_000


def test_alexnet_matches_deepcluster_at_224():
    model = build_backbone("alexnet", 224)
    assert model.get_layer("flatten").output.shape[-1] == 6 * 6 * 256
    names = ["block1_conv1", "block2_conv1", "block3_conv1", "block3_conv2", "block3_conv3"]
    kernels = [tuple(model.get_layer(name).kernel.shape) for name in names]
    assert kernels == [(11, 11, 3, 96), (5, 5, 96, 256), (3, 3, 256, 384), (3, 3, 384, 384), (3, 3, 384, 256)]
    assert model.get_layer("block1_conv1").strides == (4, 4)
    assert model.get_layer("block1_conv1").output.shape[1] == 55


def test_vgg16_bn_layer_names_and_taps():
    model = build_backbone("vgg16_bn", 32)
    names = {layer.name for layer in model.layers}
    for b, widths in enumerate(VGG16_WIDTHS, start=1):
        assert f"block{b}_pool" in names
        for c in range(1, len(widths) + 1):
            assert {f"block{b}_conv{c}", f"block{b}_bn{c}", f"block{b}_relu{c}"} <= names
    assert {"flatten", "fc6", "fc6_relu", "fc6_dropout", "fc7"} <= names
    assert model.layers[-1].name == "fc7"
    expected_all = [f"block{b}_relu{c}" for b, w in enumerate(VGG16_WIDTHS, 1) for c in range(1, len(w) + 1)]
    assert conv_tap_layers(model, "all") == expected_all
    assert conv_tap_layers(model) == ["block1_relu2", "block2_relu2", "block3_relu3", "block4_relu3", "block5_relu3"]


def test_taps_of_small_and_alexnet():
    small = build_backbone("small", 8)
    assert conv_tap_layers(small, "all") == ["block1_relu1", "block2_relu1", "block3_relu1", "block3_relu2"]
    assert conv_tap_layers(small) == ["block1_relu1", "block2_relu1", "block3_relu2"]
    alexnet = build_backbone("alexnet", 63)
    assert len(conv_tap_layers(alexnet, "all")) == 5
    assert conv_tap_layers(alexnet) == ["block1_relu1", "block2_relu1", "block3_relu3"]
    with pytest.raises(ValueError, match="block_last"):
        conv_tap_layers(small, "first")


def test_features_are_fc7_before_relu():
    model = build_backbone("small", 16)
    features = model.predict(_images(4, 16), verbose=0)
    assert model.get_layer("fc7").activation is keras.activations.linear
    assert (features < 0).any() and (features > 0).any()


def test_same_seed_same_weights_different_seed_different_weights():
    a, b, c = (build_backbone("small", 16, seed=s) for s in (3, 3, 4))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    kernels = [i for i, w in enumerate(a.weights) if w.path.endswith("kernel")]
    assert len(kernels) == 6
    for i in kernels:
        assert not np.allclose(a.get_weights()[i], c.get_weights()[i])


def test_initialisation_statistics():
    model = build_backbone("vgg16_bn", 32)
    conv = model.get_layer("block3_conv1")  # 128 -> 256 channels: fan_in != fan_out
    kernel, he_fan_out_std = np.asarray(conv.kernel), np.sqrt(2.0 / (3 * 3 * 256))
    np.testing.assert_allclose(kernel.std(), he_fan_out_std, rtol=0.02)
    assert np.abs(kernel.mean()) < 0.01 * he_fan_out_std
    assert np.abs(kernel).max() > 4 * he_fan_out_std  # a normal, not a truncated normal
    np.testing.assert_array_equal(np.asarray(conv.bias), 0.0)
    fc7 = np.asarray(model.get_layer("fc7").kernel)
    assert np.abs(fc7).max() <= 1 / np.sqrt(4096)
    np.testing.assert_allclose(fc7.std(), 1 / np.sqrt(3 * 4096), rtol=0.02)
    np.testing.assert_array_equal(np.asarray(model.get_layer("fc7").bias), 0.0)


@pytest.mark.parametrize(
    "arch, first_kernel", [("small", (3, 3, 2, 32)), ("alexnet", (11, 11, 2, 96)), ("vgg16_bn", (3, 3, 2, 64))]
)
def test_sobel_front_end(arch, first_kernel):
    model = build_backbone(arch, MIN_IMAGE_SIZE[arch], sobel=True)
    assert tuple(model.get_layer("block1_conv1").kernel.shape) == first_kernel
    front = ["normalize_scale", "normalize_center", "normalize", "input_pad", "grey", "sobel"]
    assert [layer.name for layer in model.layers[1:7]] == front
    assert not any(layer.trainable_weights for layer in model.layers[:7])
    plain = build_backbone(arch, MIN_IMAGE_SIZE[arch])
    fixed = 3 + 1 + 3 * 3 * 2 + 2  # grey (1x1, 3 -> 1) and Sobel (3x3, 1 -> 2) kernels and zero biases
    assert model.count_params() == plain.count_params() - int(np.prod(first_kernel[:2])) * first_kernel[3] + fixed


def test_sync_batchnorm_flag_reaches_every_bn():
    for sync in (False, True):
        model = build_backbone("small", 8, sync_batchnorm=sync)
        bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert len(bns) == 4 and all(layer.synchronized is sync for layer in bns)


# A Python that has keras and tensorflow but cannot import keras_dc (installed or on the path).
_WITHOUT_KERAS_DC = """
    import os, sys
    sys.modules["keras_dc"] = None  # any `import keras_dc...` now raises ImportError
    os.environ["KERAS_BACKEND"] = "tensorflow"
"""


@pytest.fixture(scope="module")
def exported_without_keras_dc(tmp_path_factory):
    """Loads a saved Sobel backbone where keras_dc cannot be imported, compares its features with the
    original's, then trains keras.Sequential([backbone, Dense(10)]) on it for a few steps."""
    folder = tmp_path_factory.mktemp("export")
    model = build_backbone("small", 16, sobel=True, seed=7)
    images = _images(8, 16)
    np.save(folder / "images.npy", images)
    np.save(folder / "expected.npy", model.predict(images, verbose=0))
    model.save(folder / "small.keras")
    return _run_python(textwrap.dedent(_WITHOUT_KERAS_DC) + textwrap.dedent(f"""
        import json
        import numpy as np
        import keras
        backbone = keras.saving.load_model({str(folder / "small.keras")!r}, safe_mode=True)
        images = np.load({str(folder / "images.npy")!r})
        out = backbone.predict(images, verbose=0)
        max_diff = float(np.abs(out - np.load({str(folder / "expected.npy")!r})).max())
        keras.utils.set_random_seed(0)
        classifier = keras.Sequential([backbone, keras.layers.Dense(10)])
        classifier.compile(optimizer=keras.optimizers.SGD(0.01),
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = classifier.fit(images, np.arange(8) % 10, batch_size=4, epochs=3, verbose=0)
        print(json.dumps({{"max_diff": max_diff, "name": backbone.name, "losses": history.history["loss"],
                          "keras_dc_loaded": any(name.startswith("keras_dc.") for name in sys.modules)}}))
    """))


def test_saved_backbone_loads_without_keras_dc(exported_without_keras_dc):
    result = exported_without_keras_dc
    assert (result["max_diff"], result["name"], result["keras_dc_loaded"]) == (0.0, "small_sobel", False)


def test_a_classifier_on_the_loaded_backbone_trains(exported_without_keras_dc):
    losses = exported_without_keras_dc["losses"]
    assert len(losses) == 3 and np.all(np.isfinite(losses)) and losses[-1] != losses[0]


def test_sync_batchnorm_under_mirrored_strategy():
    # Two replicas see very different images: synchronised BN must update its
    # moving variance with the global batch variance; plain BN does not (keras
    # keeps one replica's local statistics).
    result = _run_python("""
        import json
        import numpy as np
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras_dc
        import keras
        from keras_dc.backbones import build_backbone

        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        rng = np.random.default_rng(0)
        shards = [rng.uniform(0, 50, (4, 8, 8, 3)), rng.uniform(200, 255, (4, 8, 8, 3))]
        shards = [s.astype("float32") for s in shards]
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(shards[ctx.replica_id_in_sync_group]))
        report = {"replicas": strategy.num_replicas_in_sync}
        for sync in (True, False):
            with strategy.scope():
                model = build_backbone("small", 8, sync_batchnorm=sync)
            out = strategy.run(tf.function(lambda x: model(x, training=True)), args=(values,))
            report[f"shape_{sync}"] = list(strategy.gather(out, axis=0).shape)
            conv = keras.Model(model.input, model.get_layer("block1_conv1").output)
            pre_bn = [conv.predict(s, verbose=0).reshape(-1, 32) for s in shards]
            report[f"moving_{sync}"] = np.asarray(model.get_layer("block1_bn1").moving_variance).tolist()
            report[f"global_{sync}"] = (0.9 + 0.1 * np.concatenate(pre_bn).var(axis=0)).tolist()
        print(json.dumps(report))
    """)
    assert result["replicas"] == 2
    assert result["shape_True"] == result["shape_False"] == [8, FEATURE_DIM["small"]]
    np.testing.assert_allclose(result["moving_True"], result["global_True"], rtol=1e-4)
    assert not np.allclose(result["moving_False"], result["global_False"], rtol=1e-3)
