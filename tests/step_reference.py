"""An independent NumPy statement of the reference's training step, for tests/test_train_step.py.

TensorFlow only differentiates partial sums of per-example losses (one for the super-class loss,
one per super-class for the sub-class loss); how they are averaged, the coupled weight decay and
torch's momentum are written here in NumPy, from docs/method.md, not from keras_dc.model.
"""

import numpy as np
import tensorflow as tf

import keras

from keras_dc import model as model_lib, train
from keras_dc.config import Config

LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 0.01  # a strong decay, so that a decoupled one would show


def config(workdir: str, **changes) -> Config:
    """Two super-clusters with rotation: S = 8 super-classes, 3 sub-classes each (unless `changes`)."""
    return Config(**{**dict(workdir=workdir, data="synthetic", arch="small", image_size=16, batch_size=12, k=6,
                            super_clusters=2, rotation=True, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                            verbose=0), **changes})


def batches() -> list[tuple[np.ndarray, dict]]:
    """Two batches of 12 whose super-classes have unequal counts (5, 4, 2, 1, others 0), unequal weights."""
    rng = np.random.default_rng(7)
    routes = np.array([3, 0, 3, 5, 3, 0, 3, 1, 0, 3, 5, 0], np.int32)
    out = []
    for _ in range(2):
        images = rng.uniform(0, 255, (12, 16, 16, 3)).astype(np.float32)
        targets = {"super": rng.permutation(routes), "sub": rng.integers(0, 3, 12).astype(np.int32),
                   "weight": rng.uniform(0.2, 3.0, 12).astype(np.float32), "index": np.arange(12, dtype=np.int32)}
        out.append((images, targets))
    return out


def build(cfg: Config, layout=None) -> model_lib.DeeperClusterModel:
    """The training model with dropout off, so that a step is a deterministic function of the batch."""
    model = train.build_model(cfg, sync_batchnorm=True, layout=layout)
    for layer in model.backbone.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return model


def momentum(model: model_lib.DeeperClusterModel, variable):
    """The momentum buffer of `variable`: the optimizer's, or the layer's own for a group's heads."""
    head = model.get_layer("sub_heads")
    own = dict(zip(map(id, head.trainable_variables), head.momentums))
    return own[id(variable)] if id(variable) in own else model_lib.optimizer_slots(model.optimizer, variable)[0]


def state(model: model_lib.DeeperClusterModel) -> dict:
    """Every trainable variable and its momentum buffer, by path."""
    return {v.path: (v.numpy().astype(np.float64), momentum(model, v).numpy().astype(np.float64))
            for v in model.trainable_variables}


def set_state(model: model_lib.DeeperClusterModel, values: dict) -> None:
    """Assigns `state`-shaped values (variable, momentum buffer) to the model's variables of those paths."""
    for variable in model.trainable_variables:
        weight, buffer = values[variable.path]
        variable.assign(weight.astype(np.float32))
        momentum(model, variable).assign(buffer.astype(np.float32))


def expected_step(model: model_lib.DeeperClusterModel, images: np.ndarray, targets: dict) -> dict:
    """The variables and buffers after the reference's step on this batch, from the model's current state."""
    variables = model.trainable_variables
    sub_head_paths = {v.path for v in model.get_layer("sub_heads").trainable_variables}
    weights, routes = targets["weight"].astype(np.float64), targets["super"]
    partial = {"super": np.ones(len(routes), bool), **{j: routes == j for j in np.unique(routes)}}
    gradients = {}
    for name, mask in partial.items():
        with tf.GradientTape() as tape:
            outputs = model({"image": images, "route": routes}, training=True)
            key = "super" if name == "super" else "sub"
            ce = keras.losses.sparse_categorical_crossentropy(targets[key], outputs[key], from_logits=True)
            loss = tf.reduce_sum(tf.where(mask, targets["weight"] * ce, 0.0))
        gradients[name] = [np.zeros(v.shape) if g is None else np.asarray(g, np.float64)
                           for v, g in zip(variables, tape.gradient(loss, variables))]
    batch = len(routes)
    result = {}
    before = state(model)
    for index, variable in enumerate(variables):
        in_sub_head = variable.path in sub_head_paths
        gradient = gradients["super"][index] / batch
        for j in np.unique(routes):
            share = weights[routes == j].sum() if in_sub_head else batch
            gradient = gradient + gradients[j][index] / share
        w, buffer = before[variable.path]
        gradient = gradient + WEIGHT_DECAY * w
        buffer = MOMENTUM * buffer + gradient
        result[variable.path] = (w - LR * buffer, buffer)
    return result


def assert_matches(actual: dict, expected: dict) -> None:
    """Every variable and buffer equal up to float32 rounding."""
    assert actual.keys() == expected.keys()
    for path, (w, buffer) in expected.items():
        np.testing.assert_allclose(actual[path][1], buffer, rtol=2e-4, atol=2e-6, err_msg=f"buffer of {path}")
        np.testing.assert_allclose(actual[path][0], w, rtol=2e-4, atol=2e-6, err_msg=path)
