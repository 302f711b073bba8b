"""The importer against PyTorch itself: a VGG-16-BN in the reference's module layout, saved as the
reference saves it, converted, must give the same features (fc7 and a conv tap) on the same images.

Images are 64x64: the reference sizes fc6 for its input (512 x 7 x 7 at 224); at 64 the last map is
2 x 2, so fc6's torch (channel, row, column) order against Keras's (row, column, channel) is exercised,
which a 1 x 1 map (32x32) would not.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import keras_dc  # noqa: E402, F401
import keras  # noqa: E402

from keras_dc import reference_weights  # noqa: E402
from keras_dc.layers import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "import_reference_weights.py")
SIZE = 64
WIDTHS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
TAP, TAP_RELU = "block4_relu3", 10  # the 10th conv's ReLU in the reference's `features`


class ReferenceLayout(nn.Module):
    """The reference's module tree (model_factory.Net around vgg16.VGG16): padding, sobel, body, pred_layer."""

    def __init__(self, sobel: bool):
        super().__init__()
        self.padding = nn.ConstantPad2d(2 if sobel else 1, 0.0)
        self.sobel = nn.Sequential(nn.Conv2d(3, 1, 1), nn.Conv2d(1, 2, 3)) if sobel else None
        units, channels = [], 2 if sobel else 3
        for block in WIDTHS:
            for width in block:
                units += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                channels = width
            units.append(nn.MaxPool2d(2, 2))
        self.body = nn.Module()
        self.body.features = nn.Sequential(*units)
        side = SIZE // 32
        self.body.classifier = nn.Sequential(nn.Linear(512 * side * side, 4096), nn.ReLU(), nn.Dropout(0.5),
                                             nn.Linear(4096, 4096))
        self.pred_layer = nn.Linear(4096, 16)

    def taps(self, x):
        """(features after the TAP_RELU-th ReLU, fc7 before its ReLU), in eval mode."""
        x = self.padding(x)
        if self.sobel is not None:
            x = self.sobel(x)
        relus, tap = 0, None
        for module in self.body.features:
            x = module(x)
            relus += isinstance(module, nn.ReLU)
            if relus == TAP_RELU and tap is None:
                tap = x.permute(0, 2, 3, 1)  # NHWC, as Keras
        return tap, self.body.classifier(torch.flatten(x, 1))


def _random_reference(sobel: bool, seed: int) -> ReferenceLayout:
    """Random weights everywhere, BN statistics included, so that every mapped number matters."""
    torch.manual_seed(seed)
    net = ReferenceLayout(sobel)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                module.bias.normal_(0.0, 0.05)
    return net.eval()


def _save_like_the_reference(net: ReferenceLayout, path) -> None:
    """main.py's checkpoint: the DDP-wrapped model's state dict under 'state_dict', plus training state."""
    state = {f"module.{key}": value for key, value in net.state_dict().items()}
    torch.save({"epoch": 3, "start_iter": 0, "state_dict": state,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}]}}, path)


def _images(n=3, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)


def _torch_taps(net, images):
    normalised = (images / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    with torch.no_grad():
        tap, fc7 = net.taps(torch.from_numpy(normalised.transpose(0, 3, 1, 2).astype(np.float32)))
    return tap.numpy(), fc7.numpy()


def _assert_same_taps(model: keras.Model, net: ReferenceLayout) -> None:
    images = _images()
    tap, fc7 = keras.Model(model.input, [model.get_layer(TAP).output, model.output]).predict(images, verbose=0)
    expected_tap, expected_fc7 = _torch_taps(net, images)
    for ours, theirs in ((tap, expected_tap), (fc7, expected_fc7)):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_converted_checkpoint_gives_pytorchs_features(tmp_path):
    net = _random_reference(sobel=False, seed=0)
    _save_like_the_reference(net, tmp_path / "plain.pth")
    state = reference_weights.read_checkpoint(str(tmp_path / "plain.pth"))
    assert not reference_weights.has_sobel(state)
    model = reference_weights.convert(state)
    assert model.input_shape == (None, SIZE, SIZE, 3)
    _assert_same_taps(model, net)


def test_tool_converts_a_sobel_checkpoint_into_an_export_that_gives_pytorchs_features(tmp_path):
    net = _random_reference(sobel=True, seed=1)
    _save_like_the_reference(net, tmp_path / "ours.pth")
    result = subprocess.run([sys.executable, TOOL, f"--checkpoint={tmp_path / 'ours.pth'}",
                             f"--output_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    model = keras.models.load_model(tmp_path / "out" / "backbone.keras")
    assert [layer.name for layer in model.layers[3:7]] == ["normalize", "input_pad", "grey", "sobel"]
    _assert_same_taps(model, net)
    description = (tmp_path / "out" / "backbone.json").read_text()
    assert '"sobel": true' in description and "CC BY-NC 4.0" in description


def _small_state(**changes):
    """A plain dict standing for a checkpoint, enough for the errors found before any weight is set."""
    state = {"classifier.0.weight": np.zeros((4096, 512 * 4), np.float32)}
    state.update(changes)
    return state


def test_checkpoints_of_another_architecture_are_refused_with_the_weight_at_fault():
    with pytest.raises(reference_weights.ReferenceWeightsError, match="no fc6"):
        reference_weights.convert({"features.0.weight": np.zeros((64, 3, 3, 3))})
    with pytest.raises(reference_weights.ReferenceWeightsError, match="not 512 x side x side"):
        reference_weights.convert(_small_state(**{"classifier.0.weight": np.zeros((4096, 9216))}))
    with pytest.raises(reference_weights.ReferenceWeightsError, match="no features.0.weight"):
        reference_weights.convert(_small_state())
    with pytest.raises(reference_weights.ReferenceWeightsError, match="cannot be used without"):
        reference_weights.convert(_small_state(**{"sobel.0.weight": np.zeros((1, 3, 1, 1))}), sobel=False)


def test_unused_weights_and_wrong_shapes_are_refused(tmp_path):
    net = _random_reference(sobel=False, seed=2)
    state = {key.removeprefix("body."): value.numpy() for key, value in net.state_dict().items()}
    extra = {**state, "layer5.weight": np.zeros(3, np.float32)}
    with pytest.raises(reference_weights.ReferenceWeightsError, match="no place in a VGG-16-BN, first layer5"):
        reference_weights.convert(extra)
    wrong = {**state, "features.4.weight": np.zeros(5, np.float32)}
    with pytest.raises(reference_weights.ReferenceWeightsError, match="block1_bn2"):
        reference_weights.convert(wrong)


@pytest.mark.parametrize("args, flag", [(["--checkpoint=missing.pth", "--output_dir=x"], "--checkpoint"),
                                        (["--checkpoint=" + TOOL], "--output_dir")])
def test_tool_rejects_a_bad_flag_with_one_line(args, flag):
    result = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith(f"error: {flag}:")


def test_tool_names_the_checkpoint_when_it_is_not_one(tmp_path):
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    result = subprocess.run([sys.executable, TOOL, f"--checkpoint={tmp_path / 'notes.pth'}",
                             f"--output_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --checkpoint:")
    assert not (tmp_path / "out").exists()
