"""ResNet-50 as a DeeperCluster body: Keras's own layers on this project's input stage, trained end to end."""

import time

import numpy as np

import keras_dc  # noqa: F401
import keras

from keras_dc import backbones, probe, train
from keras_dc.config import Config
from keras_dc.sources import load_source

# keras.applications.ResNet50(include_top=False, weights=None).count_params(): torchvision's 23,508,032
# without fc plus the biases Keras gives its 53 convs.
KERAS_RESNET50_NOTOP_PARAMS = 23_587_712
STAGE_OUTPUTS = ["conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"]


def test_resnet50_is_keras_resnet50_on_the_input_stage_with_this_projects_init():
    model = backbones.build_backbone("resnet50", 32, sobel=True, sync_batchnorm=True, seed=3)
    assert [layer.name for layer in model.layers[3:8]] == ["normalize", "input_pad", "grey", "sobel", "conv1_pad"]
    assert tuple(model.get_layer("conv1_conv").kernel.shape) == (7, 7, 2, 64)
    sobel_params = 3 + 1 + 3 * 3 * 2 + 2
    assert model.count_params() == KERAS_RESNET50_NOTOP_PARAMS - 7 * 7 * 64 + sobel_params
    assert backbones.conv_tap_layers(model) == STAGE_OUTPUTS
    assert len(backbones.conv_tap_layers(model, "all")) == 3 + 4 + 6 + 3
    features = model.predict(np.full((2, 32, 32, 3), 128.0, np.float32), verbose=0)
    assert features.shape == (2, 2048) and features.dtype == np.float32 and (features >= 0).all()
    conv = model.get_layer("conv4_block1_2_conv")  # 3x3, 256 -> 256
    np.testing.assert_allclose(np.std(conv.kernel), np.sqrt(2.0 / (3 * 3 * 256)), rtol=0.02)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 53 and all((bn.momentum, bn.epsilon, bn.synchronized) == (0.9, 1e-5, True) for bn in bns)


def test_resnet50_trains_an_epoch_of_deepercluster_probes_and_exports(tmp_path):
    config = Config(workdir=str(tmp_path / "run"), data="synthetic", synthetic_size=40, arch="resnet50",
                    image_size=64, batch_size=8, epochs=1, k=4, super_clusters=2, pca_dim=8, kmeans_iters=3,
                    min_crop_scale=0.5, verbose=0)
    start = time.perf_counter()
    result = train.train(config, log=lambda line: None)
    trained = time.perf_counter()
    backbone = keras.models.load_model(result["backbone"])
    assert backbone.output.shape == (None, 2048)
    source = load_source("synthetic", 64, synthetic_size=40)
    settings = probe.EvaluationSettings(val_fraction=0.25, kmeans_pca_dim=8, kmeans_iters=3,
                                        probe=probe.ProbeSettings(lrs=(0.1,), kfold=0, epochs=2))
    report = probe.evaluate_backbone(backbone, backbones.conv_tap_layers(backbone), source, None, settings)
    assert list(report["layers"]) == STAGE_OUTPUTS
    assert all(0.0 <= row["top1"] <= 1.0 for row in report["layers"].values())
    assert report["images"] == {"train": 30, "val": 10}
    print(f"resnet50: train + export {trained - start:.1f} s, load + probe {time.perf_counter() - trained:.1f} s")
