"""Linear probes on a frozen backbone (docs/evaluation.md, docs/method.md "Evaluation protocol").

Two protocols. "fast" (the default): one forward pass per image feeds every
probed layer: a tap model outputs each selected conv layer, average-pooled until
it has at most `max_dim` values, and the final features. The pooled activations
are cached, standardised with the training rows' mean and deviation (an affine
map, so the probe stays linear) and one softmax-regression head per layer (per
layer and learning rate during k-fold selection) is trained by SGD on shared
batches of the centre view. "reference": the reference's eval_linear.py: no
standardisation, a new random resized crop + flip of every training image each
epoch, SGD with coupled decay and lr_t = lr_0 / sqrt(1 + lr_0 * wd * t).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import tensorflow as tf
from sklearn.model_selection import StratifiedKFold, train_test_split

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

from keras_dc import backbones, callbacks, data, evaluation, optimizer as optimizer_lib, progress
from keras_dc.sources import ImageSource

FEATURES = "features"  # tap-model output holding the backbone's own output (fc7)
_STD_FLOOR = 1e-6
# The reference's probe of VGG-16 conv n (1..13) at 224 px: eval_linear.py's RegLog average pool (window =
# stride, no padding: 9,216 or 8,192 values) and the lr of linear_classif_layers.sh on ImageNet (batch 256).
REFERENCE_IMAGE_SIZE = 224
REFERENCE_VGG16 = {1: (18, 0.005), 2: (18, 0.01), 3: (14, 0.03), 4: (14, 0.03), 5: (9, 0.03), 6: (9, 0.03),
                   7: (9, 0.02), 8: (6, 0.03), 9: (6, 0.03), 10: (6, 0.03), 11: (3, 0.02), 12: (3, 0.02),
                   13: (3, 0.02)}


class PoolingError(ValueError):
    """A probed layer has more channels than the values a probe may take (max_dim)."""


class FoldError(ValueError):
    """A class has fewer training images than the folds that choose the learning rate."""


@dataclasses.dataclass
class ProbeSettings:
    """How the linear classifiers are trained: SGD with momentum, weight decay and a cosine schedule.

    With several `lrs`, each layer's is chosen by stratified `kfold` cross-validation on the training rows.
    Weight decay is Keras SGD's (w -= lr * weight_decay * w each step). `protocol="reference"` trains
    on augmented views instead (see `reference_probe`), with one learning rate and coupled decay.
    """

    lrs: tuple[float, ...] = (0.1, 0.01, 0.001, 0.0001)  # each report's cv_top1 says whether the best is at an edge
    kfold: int = 3
    epochs: int = 30
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    protocol: str = "fast"
    min_crop_scale: float = 0.08  # of the reference protocol's training view
    flip: bool = True
    paper_lrs: bool = False  # reference protocol: each VGG-16 layer's lr of the paper instead of lrs[0]


@keras.saving.register_keras_serializable(package="keras_dc")
class InverseSqrtDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr_t = lr_0 / sqrt(1 + lr_0 * weight_decay * t) at iteration t, the reference probe's schedule."""

    def __init__(self, initial_learning_rate: float, weight_decay: float):
        self.initial_learning_rate = initial_learning_rate
        self.weight_decay = weight_decay

    def __call__(self, step):
        lr = self.initial_learning_rate
        return lr / tf.sqrt(1.0 + lr * self.weight_decay * tf.cast(step, tf.float32))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "weight_decay": self.weight_decay}


def pool_size(height: int, width: int, channels: int, max_dim: int) -> int:
    """Smallest average-pool window (stride = window, 'same' padding) leaving at most max_dim values."""
    if channels > max_dim:
        raise PoolingError(f"{max_dim} is less than the {channels} channels of a probed layer")
    size = 1
    while math.ceil(height / size) * math.ceil(width / size) * channels > max_dim:
        size += 1
    return size


def reference_layers(backbone: keras.Model, layer_names: list[str]) -> dict[str, tuple[int, float]]:
    """(RegLog's pooling window, the paper's lr) of each named layer when the backbone is a VGG-16 at
    224 px, the only network and size the reference probes; {} otherwise."""
    every = backbones.conv_tap_layers(backbone, "all")
    if len(every) != len(REFERENCE_VGG16) or backbone.input_shape[1] != REFERENCE_IMAGE_SIZE:
        return {}
    return {name: REFERENCE_VGG16[every.index(name) + 1] for name in layer_names}


def tap_model(backbone: keras.Model, layer_names: list[str], max_dim: int, with_features: bool = True,
              windows: dict[str, int] | None = None) -> tuple[keras.Model, dict[str, dict]]:
    """A model from the backbone's input to each named layer, pooled and flattened (and the final features).

    A layer in `windows` is pooled with that window and no padding (the reference's RegLog), any other
    until it has at most max_dim values. Also returns, per layer, the flattened size ("dim") and the
    pooling window ("pool").
    """
    outputs, shapes = {}, {}
    windows = windows or {}
    for name in layer_names:
        tensor = backbone.get_layer(name).output
        _, height, width, channels = tensor.shape
        size = windows.get(name) or pool_size(height, width, channels, max_dim)
        if size > 1:
            tensor = keras.layers.AveragePooling2D(size, strides=size, padding="valid" if name in windows else "same",
                                                   name=f"probe_pool_{name}")(tensor)
        outputs[name] = keras.layers.Flatten(name=f"probe_flatten_{name}")(tensor)
        shapes[name] = {"dim": int(math.prod(tensor.shape[1:])), "pool": size}
    if with_features:
        outputs[FEATURES] = backbone.output
    return keras.Model(backbone.input, outputs, name="probe_taps"), shapes


def extract(model: keras.Model, source: ImageSource, image_size: int, batch_size: int) -> dict[str, np.ndarray]:
    """Every output of a tap model for every image of the source, in index order (centre view)."""
    shown = callbacks.StageProgress("probe: extracting features", source.num_images, batch_size)
    outputs = model.predict(data.clustering_dataset(source, image_size, batch_size), verbose=0, callbacks=[shown])
    return {name: np.asarray(values, np.float32) for name, values in outputs.items()}


def take(features: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The given rows of every feature array."""
    return {name: values[rows] for name, values in features.items()}


def holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of a stratified split: (training rows, held-out rows with `fraction` of the data)."""
    rows = np.arange(len(labels))
    fit_rows, held_rows = train_test_split(rows, test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(fit_rows), np.sort(held_rows)


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Centres and scales each column with the training rows' mean and deviation (constant columns become 0)."""
    mean = train.mean(axis=0)
    scale = np.maximum(train.std(axis=0), _STD_FLOOR)
    return [((values - mean) / scale).astype(np.float32) for values in (train, *others)]


def train_heads(features: dict[str, np.ndarray], labels: np.ndarray, num_classes: int,
                heads: list[tuple[str, float]], settings: ProbeSettings) -> list[tuple[np.ndarray, np.ndarray]]:
    """Trains one softmax regression per (feature name, learning rate) on shared shuffled batches.

    Heads start at zero and each has its own optimizer, so a head's result does not
    depend on the others. Returns each head's (kernel, bias).
    """
    steps = math.ceil(len(labels) / settings.batch_size) * settings.epochs
    layers, optimizers = [], []
    for name, lr in heads:
        layer = keras.layers.Dense(num_classes, kernel_initializer="zeros", dtype="float32")
        layer.build((None, features[name].shape[1]))
        optimizer = keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(lr, steps),
                                         momentum=settings.momentum, weight_decay=settings.weight_decay or None)
        optimizer.build(layer.trainable_variables)
        layers.append(layer)
        optimizers.append(optimizer)
    step = _train_step(features, labels, [name for name, _ in heads], layers, optimizers)
    rng = np.random.default_rng(settings.seed)
    stage = progress.Stage(f"probe: training {len(heads)} linear heads", settings.epochs, "epoch")
    for epoch in range(settings.epochs):
        order = rng.permutation(len(labels))
        for start in range(0, len(order), settings.batch_size):
            step(order[start:start + settings.batch_size])
        stage.update(epoch + 1)
    return [(layer.kernel.numpy(), layer.bias.numpy()) for layer in layers]


def _train_step(features, labels, names, layers, optimizers):
    """A compiled SGD step of every head on the rows it is given (gathered in the graph, not in Python)."""
    tensors = {name: tf.convert_to_tensor(features[name]) for name in set(names)}
    targets = tf.convert_to_tensor(labels)

    @tf.function(reduce_retracing=True)
    def step(rows):
        batch_targets = tf.gather(targets, rows)
        batch = {name: tf.gather(values, rows) for name, values in tensors.items()}
        with tf.GradientTape() as tape:
            losses = [keras.losses.sparse_categorical_crossentropy(batch_targets, layer(batch[name]), from_logits=True)
                      for layer, name in zip(layers, names)]
            total = tf.add_n([tf.reduce_mean(loss) for loss in losses])
        gradients = tape.gradient(total, [layer.trainable_variables for layer in layers])
        for optimizer, layer, gradient in zip(optimizers, layers, gradients):
            optimizer.apply(gradient, layer.trainable_variables)

    return step


def choose_learning_rates(features: dict[str, np.ndarray], labels: np.ndarray, num_classes: int,
                          settings: ProbeSettings) -> dict[str, dict]:
    """Per feature, the learning rate with the best mean k-fold top-1 and the top-1 of every candidate."""
    if len(settings.lrs) == 1:
        return {name: {"lr": settings.lrs[0]} for name in features}
    smallest_class = int(np.unique(labels, return_counts=True)[1].min())
    if smallest_class < settings.kfold:
        raise FoldError(f"{settings.kfold} folds, but a class has only {smallest_class} training images")
    heads = [(name, lr) for name in features for lr in settings.lrs]
    correct = np.zeros(len(heads))
    folds = StratifiedKFold(settings.kfold, shuffle=True, random_state=settings.seed)
    for fit_rows, held_rows in folds.split(np.zeros(len(labels)), labels):
        weights = train_heads(take(features, fit_rows), labels[fit_rows], num_classes, heads, settings)
        for index, ((name, _), (kernel, bias)) in enumerate(zip(heads, weights)):
            scores = features[name][held_rows] @ kernel + bias
            correct[index] += evaluation.topk_accuracy(scores, labels[held_rows], 1) / settings.kfold
    table = correct.reshape(len(features), len(settings.lrs))
    return {name: {"lr": settings.lrs[int(np.argmax(row))],
                   "cv_top1": {str(lr): float(value) for lr, value in zip(settings.lrs, row)}}
            for name, row in zip(features, table)}


def grid_edge_choices(layers: dict[str, dict]) -> dict[str, str]:
    """The layers whose k-fold choice is the smallest or largest candidate lr: a wider grid may probe them better."""
    edges = {}
    for name, row in layers.items():
        candidates = sorted(float(lr) for lr in row.get("cv_top1", {}))
        if len(candidates) > 1 and row["lr"] in (candidates[0], candidates[-1]):
            edges[name] = "smallest" if row["lr"] == candidates[0] else "largest"
    return edges


def linear_probe(train: dict[str, np.ndarray], train_labels: np.ndarray, val: dict[str, np.ndarray],
                 val_labels: np.ndarray, num_classes: int, settings: ProbeSettings) -> dict[str, dict]:
    """Standardises, picks each layer's learning rate, fits on all training rows; top-1/top-5 on val."""
    pairs = {name: standardize(train[name], val[name]) for name in train}
    train_std = {name: pair[0] for name, pair in pairs.items()}
    choices = choose_learning_rates(train_std, train_labels, num_classes, settings)
    heads = [(name, choices[name]["lr"]) for name in train]
    weights = train_heads(train_std, train_labels, num_classes, heads, settings)
    results = {}
    for (name, _), (kernel, bias) in zip(heads, weights):
        scores = pairs[name][1] @ kernel + bias
        results[name] = {"top1": evaluation.topk_accuracy(scores, val_labels, 1),
                         "top5": evaluation.topk_accuracy(scores, val_labels, 5), **choices[name]}
    return results


def reference_probe(model: keras.Model, layer_names: list[str], source: ImageSource, split: ProbeSplit,
                    settings: ProbeSettings, layer_lrs: dict[str, float] | None = None) -> dict[str, dict]:
    """The reference's linear probe (eval_linear.py): per layer, avg-pool + linear on raw activations, trained
    on a new random resized crop + flip of every training image each epoch (the frozen network in inference
    mode), SGD with coupled decay and lr_0 / sqrt(1 + lr_0 * wd * t); top-1/top-5 on the centre view.
    lr_0 is the layer's in `layer_lrs`, else settings.lrs[0]."""
    lrs = {name: (layer_lrs or {}).get(name, settings.lrs[0]) for name in layer_names}
    image_size = model.input_shape[1]
    tables = data.LabelTables(source.num_images, len(split.train_rows))
    tables.set_assignments(np.zeros(source.num_images), source.labels, np.ones(source.num_images))
    dataset = data.training_dataset(source, tables, image_size, settings.batch_size, rotation=False,
                                    seed=settings.seed, min_crop_scale=settings.min_crop_scale, flip=settings.flip)
    heads = {}
    for name in layer_names:
        head = keras.layers.Dense(split.num_classes, dtype="float32", name=f"probe_{name}",
                                  kernel_initializer=keras.initializers.VarianceScaling(  # torch's nn.Linear
                                      1.0 / 3.0, "fan_in", "uniform", seed=settings.seed))
        head.build((None, split.train[name].shape[1]))
        optimizer = optimizer_lib.SGD(InverseSqrtDecay(lrs[name], settings.weight_decay),
                                      momentum=settings.momentum, weight_decay=settings.weight_decay)
        optimizer.build(head.trainable_variables)
        heads[name] = (head, optimizer)

    @tf.function
    def step(images, labels):
        taps = model(images, training=False)
        with tf.GradientTape() as tape:
            losses = [tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, head(taps[name]),
                                                                                  from_logits=True))
                      for name, (head, _) in heads.items()]
        gradients = tape.gradient(losses, [head.trainable_variables for head, _ in heads.values()])
        for (head, optimizer), gradient in zip(heads.values(), gradients):
            optimizer.apply(gradient, head.trainable_variables)

    rng = np.random.default_rng(settings.seed)
    stage = progress.Stage(f"probe: training {len(heads)} linear heads on augmented views", settings.epochs, "epoch")
    for epoch in range(settings.epochs):
        tables.set_plan(rng.permutation(split.train_rows), np.zeros(len(split.train_rows)), epoch)
        for images, targets in dataset:
            step(images, targets["sub"])
        stage.update(epoch + 1)
    results = {}
    for name, (head, _) in heads.items():
        scores = split.val[name] @ head.kernel.numpy() + head.bias.numpy()
        results[name] = {"top1": evaluation.topk_accuracy(scores, split.val_labels, 1),
                         "top5": evaluation.topk_accuracy(scores, split.val_labels, 5), "lr": lrs[name]}
    return results


@dataclasses.dataclass
class EvaluationSettings:
    """Everything `evaluate_backbone` needs besides the network and the images."""

    layers: str = "block_last"
    max_dim: int = 10000
    val_fraction: float = 0.2
    extract_batch_size: int = 256
    knn_k: int = evaluation.KNN_NEIGHBOURS
    knn_temperature: float = evaluation.KNN_TEMPERATURE
    kmeans_k: int = 0  # 0: the number of classes
    kmeans_pca_dim: int = 64
    kmeans_iters: int = 20
    probe: ProbeSettings = dataclasses.field(default_factory=ProbeSettings)


@dataclasses.dataclass
class ProbeSplit:
    """Features and labels of the probe's training and validation rows, and of the whole training source."""

    train: dict[str, np.ndarray]
    train_labels: np.ndarray
    val: dict[str, np.ndarray]
    val_labels: np.ndarray
    source: dict[str, np.ndarray]
    source_labels: np.ndarray
    train_rows: np.ndarray  # the training rows' indices in the training source

    @property
    def num_classes(self) -> int:
        return int(max(self.train_labels.max(), self.val_labels.max())) + 1


def split_features(model: keras.Model, train_source: ImageSource, val_source: ImageSource | None,
                   settings: EvaluationSettings) -> ProbeSplit:
    """Runs the tap model once per image; without a validation source, holds out a stratified fraction."""
    image_size = model.input_shape[1]
    everything = extract(model, train_source, image_size, settings.extract_batch_size)
    labels = train_source.labels
    if val_source is None:
        fit_rows, held_rows = holdout(labels, settings.val_fraction, settings.probe.seed)
        return ProbeSplit(take(everything, fit_rows), labels[fit_rows], take(everything, held_rows),
                          labels[held_rows], everything, labels, fit_rows)
    val = extract(model, val_source, image_size, settings.extract_batch_size)
    return ProbeSplit(everything, labels, val, val_source.labels, everything, labels, np.arange(len(labels)))


def evaluate_backbone(backbone: keras.Model, layer_names: list[str], train_source: ImageSource,
                      val_source: ImageSource | None, settings: EvaluationSettings,
                      cluster_ids: np.ndarray | None = None) -> dict:
    """Linear probes on every named layer and k-NN on the final features, from one shared forward pass.

    With `cluster_ids` (the model's clusters of the training source) the report scores them too,
    beside k-means on the final features. Returns {"layers", "knn", "clusters", "timing"}.
    """
    start = time.perf_counter()
    reference = reference_layers(backbone, layer_names) if settings.probe.protocol == "reference" else {}
    model, shapes = tap_model(backbone, layer_names, settings.max_dim,
                              windows={name: window for name, (window, _) in reference.items()})
    split = split_features(model, train_source, val_source, settings)
    extracted = time.perf_counter()
    if settings.probe.protocol == "reference":
        layer_lrs = {name: lr for name, (_, lr) in reference.items()} if settings.probe.paper_lrs else None
        probes = reference_probe(model, layer_names, train_source, split, settings.probe, layer_lrs)
    else:
        probes = linear_probe(take_layers(split.train, layer_names), split.train_labels,
                              take_layers(split.val, layer_names), split.val_labels, split.num_classes,
                              settings.probe)
    probed = time.perf_counter()
    knn = evaluation.knn_accuracy(split.train[FEATURES], split.train_labels, split.val[FEATURES], split.val_labels,
                                  split.num_classes, settings.knn_k, settings.knn_temperature)
    clusters = cluster_report(split, settings, cluster_ids)
    timing = {"extract_s": extracted - start, "probe_s": probed - extracted,
              "total_s": time.perf_counter() - start}
    return {"layers": {name: {**shapes[name], **probes[name]} for name in layer_names}, "knn": knn,
            "clusters": clusters, "timing": timing,
            "images": {"train": len(split.train_labels), "val": len(split.val_labels)}}


def take_layers(features: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """The named entries of a feature dict, in the given order."""
    return {name: features[name] for name in names}


def cluster_report(split: ProbeSplit, settings: EvaluationSettings, cluster_ids: np.ndarray | None) -> dict:
    """Cluster quality on the whole training source: k-means on the final features, and the model's clusters."""
    k = settings.kmeans_k or split.num_classes
    report = {"kmeans": evaluation.kmeans_cluster_metrics(split.source[FEATURES], split.source_labels, k,
                                                          settings.kmeans_pca_dim, settings.kmeans_iters,
                                                          settings.probe.seed)}
    if cluster_ids is not None:
        report["model"] = evaluation.cluster_metrics(split.source_labels, cluster_ids)
    return report


def per_layer_baseline(backbone: keras.Model, layer_names: list[str], train_source: ImageSource,
                       val_source: ImageSource | None, settings: EvaluationSettings) -> dict:
    """The same probes as `evaluate_backbone`, one run per layer (own forward pass, own training), timed.

    This is how the reference evaluates layers; it exists to measure what sharing the pass saves.
    """
    start = time.perf_counter()
    layers = {}
    for name in layer_names:
        model, shapes = tap_model(backbone, [name], settings.max_dim, with_features=False)
        split = split_features(model, train_source, val_source, settings)
        result = linear_probe(split.train, split.train_labels, split.val, split.val_labels, split.num_classes,
                              settings.probe)
        layers[name] = {**shapes[name], **result[name]}
    return {"layers": layers, "timing": {"total_s": time.perf_counter() - start}}
