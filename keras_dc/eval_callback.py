"""Training-time evaluation: k-NN and a quick linear probe every few epochs, into the epoch's logs."""

from __future__ import annotations

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

from keras_dc import backbones, evaluation, probe
from keras_dc.sources import ImageSource

# A probe cheap enough to run during training: one learning rate, no cross-validation, few epochs.
QUICK_SETTINGS = probe.EvaluationSettings(probe=probe.ProbeSettings(lrs=(0.1,), kfold=0, epochs=10))


class EvaluationCallback(keras.callbacks.Callback):
    """Every `every` epochs, k-NN top-1 on the backbone's output and linear-probe top-1 on its last conv tap.

    The figures go into the epoch's logs as eval_knn_top1 and eval_probe_top1, so callbacks that
    come after this one (metrics file, TensorBoard) record them. The model must have a `backbone`.
    Without `val_source`, a stratified `settings.val_fraction` of `train_source` is held out.
    """

    def __init__(self, train_source: ImageSource, val_source: ImageSource | None, every: int,
                 settings: probe.EvaluationSettings = QUICK_SETTINGS):
        super().__init__()
        if train_source.labels is None or (val_source is not None and val_source.labels is None):
            raise ValueError("the evaluation callback needs labelled images")
        self.train_source = train_source
        self.val_source = val_source
        self.every = every
        self.settings = settings
        self._taps: keras.Model | None = None
        self._layer = ""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and (epoch + 1) % self.every == 0:
            logs.update(self.evaluate())

    def evaluate(self) -> dict[str, float]:
        """k-NN and probe top-1 of the model's backbone with its current weights."""
        if self._taps is None:
            backbone = self.model.backbone
            self._layer = backbones.conv_tap_layers(backbone)[-1]
            self._taps, _ = probe.tap_model(backbone, [self._layer], self.settings.max_dim)
        split = probe.split_features(self._taps, self.train_source, self.val_source, self.settings)
        features = probe.FEATURES
        knn = evaluation.knn_accuracy(split.train[features], split.train_labels, split.val[features],
                                      split.val_labels, split.num_classes, self.settings.knn_k,
                                      self.settings.knn_temperature)
        layer = [self._layer]
        result = probe.linear_probe(probe.take_layers(split.train, layer), split.train_labels,
                                    probe.take_layers(split.val, layer), split.val_labels, split.num_classes,
                                    self.settings.probe)
        return {"eval_knn_top1": knn["top1"], "eval_probe_top1": result[self._layer]["top1"]}
