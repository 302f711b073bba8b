"""--pretrained: the body starts from a backbone.keras, a workdir or a reference PyTorch checkpoint; a
network that does not fit is refused in one line; the setting is recorded and may not change on resume."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_dc import backbones, pretrained, train, workdir as workdir_lib
from keras_dc.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _saved_backbone(folder, arch="small", image_size=16, sobel=False, seed=7) -> str:
    """A network with other weights than any run's random init, exported as a workdir exports it."""
    os.makedirs(folder, exist_ok=True)
    model = backbones.build_backbone(arch, image_size, sobel=sobel, seed=seed)
    return workdir_lib.save_backbone(str(folder), model, {"arch": arch})


def _kernels(model):
    return {layer.name: layer.get_weights()[0] for layer in model.layers if layer.name.startswith("block")
            and "conv" in layer.name}


def test_a_run_starts_from_a_backbone_keras_and_records_it(tiny_config, tmp_path):
    """With a vanishing learning rate the trained body still has the stored conv kernels, not its random ones."""
    path = _saved_backbone(tmp_path / "source")
    config = dataclasses.replace(tiny_config, pretrained=path, epochs=1, lr=1e-12, weight_decay=0.0)
    lines = []
    train.train(config, log=lines.append)
    assert any(line.startswith(f"pretrained: the body starts from {path}") for line in lines), lines
    exported = workdir_lib.backbone_path(config.workdir)
    stored, trained = (_kernels(workdir_lib.load_backbone(p)) for p in (path, exported))
    for name, kernel in stored.items():
        np.testing.assert_allclose(trained[name], kernel, atol=1e-6, err_msg=name)
    assert workdir_lib.read_run(config.workdir).config.pretrained == path
    with pytest.raises(ConfigError, match="--pretrained: the workdir .* was trained with --pretrained="):
        train.check_settings(dataclasses.replace(config, pretrained=""))


def test_a_workdir_gives_its_exported_backbone(tmp_path):
    folder = tmp_path / "run"
    _saved_backbone(folder, seed=3)
    target = backbones.build_backbone("small", 16, seed=0)
    pretrained.load_into(target, str(folder), "small", False)
    for name, kernel in _kernels(workdir_lib.load_backbone(workdir_lib.backbone_path(str(folder)))).items():
        np.testing.assert_array_equal(target.get_layer(name).get_weights()[0], kernel)


def test_a_reference_checkpoint_built_with_torch_gives_pytorchs_features(tmp_path):
    """The reference's checkpoint layout (as tests/test_reference_weights.py builds it), Sobel included."""
    reference = pytest.importorskip("test_reference_weights")
    net = reference._random_reference(sobel=True, seed=2)
    reference._save_like_the_reference(net, tmp_path / "ours.pth")
    target = backbones.build_backbone("vgg16_bn", reference.SIZE, sobel=True, seed=0)
    pretrained.load_into(target, str(tmp_path / "ours.pth"), "vgg16_bn", True)
    reference._assert_same_taps(target, net)
    with pytest.raises(ConfigError, match="--pretrained: .*Sobel"):
        pretrained.load_into(backbones.build_backbone("vgg16_bn", reference.SIZE, seed=0), str(tmp_path / "ours.pth"),
                             "vgg16_bn", False)


@pytest.mark.parametrize("arch,image_size,sobel,reason", [
    ("small", 16, True, "without Sobel input, this run with"),
    ("small", 32, False, r"its input is \(16, 16, 3\), this run's \(32, 32, 3\)"),
    ("alexnet", 16, False, "another --arch"),
])
def test_a_network_that_does_not_fit_is_refused(tmp_path, arch, image_size, sobel, reason):
    path = _saved_backbone(tmp_path / "source")
    if image_size < backbones.MIN_IMAGE_SIZE[arch]:
        image_size = backbones.MIN_IMAGE_SIZE[arch]
        reason = "its input is"
    with pytest.raises(ConfigError, match=f"--pretrained: {path} does not fit --arch={arch}: .*{reason}"):
        pretrained.load_into(backbones.build_backbone(arch, image_size, sobel=sobel), path, arch, sobel)


def test_tool_refuses_a_mismatch_and_a_missing_path_with_one_line(tmp_path):
    path = _saved_backbone(tmp_path / "source")
    base = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "--data=synthetic", "--synthetic_size=64",
            "--image_size=16", "--batch_size=16", "--epochs=1", "--k=4", "--pca_dim=8", "--verbose=0"]
    for extra, expected in (([f"--pretrained={path}", "--sobel"], "without Sobel input"),
                            ([f"--pretrained={tmp_path / 'nowhere.pth'}"], "does not exist")):
        result = subprocess.run(base + [f"--workdir={tmp_path / 'run'}"] + extra, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith(("error:", "Traceback"))]
        assert len(lines) == 1 and lines[0].startswith("error: --pretrained: ") and expected in lines[0], lines
