"""Figures of the routed heads at large S and k, and of the PCA of fewer rows than dimensions.

    python -m keras_dc.bench.heads --k=64000 --super_clusters=4 --dim=4096

measures the peak RSS of train steps with big heads against the memory plan (docs/scaling.md);
tools/benchmark.py calls the step and PCA figures.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import resource
import sys

import numpy as np
import tensorflow as tf

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

from keras_dc import memory_plan, optimizer as optimizer_lib, pca
from keras_dc.bench import benchmark
from keras_dc.config import Config
from keras_dc.model import DeeperClusterModel
from keras_dc.sources import ImageSource


def heads_step_figures(small: Config, source: ImageSource, steps: int) -> dict[str, float]:
    """Images/s of the train step on a cached batch, same body and batch: S=16 heads x 1,000
    outputs, S=1 x 1,000, k=16,000 m=4 (S=16 x 4,000), and plain Keras with one 1,000-output head."""
    configs = {"heads16": dataclasses.replace(small, k=4000, super_clusters=4, rotation=True),
               "heads1": dataclasses.replace(small, k=1000, super_clusters=1, rotation=False),
               "large_heads": dataclasses.replace(small, k=16000, super_clusters=4, rotation=True)}
    runs, pipelines = {}, {}
    for name, config in configs.items():
        model, pipelines[name], _ = benchmark._dc_setup(config, source, steps)
        runs[name] = model, benchmark._cached(pipelines[name], steps)
    runs["plain_1000"] = (benchmark.plain_keras_model(configs["heads1"]),
                          benchmark._cached(pipelines["heads1"], steps, ("super", "sub")))
    rates = dict.fromkeys(runs, 0.0)
    for _ in range(benchmark.ROUNDS):
        for name, (model, dataset) in runs.items():
            rates[name] = max(rates[name], benchmark._fit_rate(model, dataset, small.batch_size))
    return {**{f"{name}_images_per_s": rate for name, rate in rates.items()},
            "plain_1000_step_s": small.batch_size / rates["plain_1000"],
            "large_heads_update_s": heads_update_seconds(runs["large_heads"][0])}


def heads_update_seconds(model: DeeperClusterModel, repeats: int = 10) -> float:
    """Seconds of the optimizer's update of the sub-class heads alone (random gradients; the model's
    weights move): the part of a step whose bytes grow with S x units, whatever the batch, since every
    head moves every step."""
    variables = model.get_layer("sub_heads").trainable_variables
    gradients = [tf.random.normal(variable.shape) for variable in variables]
    update = tf.function(lambda: model.optimizer.apply(gradients, variables))
    update()
    return benchmark._best_seconds(lambda: (update(), variables[0].numpy()), repeats=repeats)[0]


def pca_small_n_figures(rows: int = 512, dim: int = 4096, pca_dim: int = 256) -> dict[str, float]:
    """Seconds of keras-dc's PCA fit and of faiss.PCAMatrix on the same rows, fewer than dimensions."""
    import faiss

    features = (np.random.default_rng(0).normal(size=(rows, dim)) * np.linspace(3.0, 0.1, dim)).astype(np.float32)

    def bare():
        faiss.PCAMatrix(dim, pca_dim, -0.5).train(features)

    ours_s, faiss_s = benchmark._best_seconds(functools.partial(pca.fit_pca, features, pca_dim), bare)
    return {"pca_small_n_s": ours_s, "faiss_pca_small_n_s": faiss_s}


def _rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def _peak_rss() -> int:
    """Highest resident bytes of this process since the last _reset_peak."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM"))
    return int(line.split()[1]) * 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _live_bytes(which: str = "current") -> int:
    """Bytes of tensors TensorFlow's CPU allocator holds now ("current": the exact size of what is
    alive) or held at most since the last reset ("peak")."""
    return tf.config.experimental.get_memory_info("CPU:0")[which]


def step_memory_figures(k: int, super_clusters: int, dim: int, rotation: bool, batch: int = 32,
                        steps: int = 3) -> dict[str, float]:
    """Memory after building big heads, after a first step (weights and slots), and the peak of
    `steps` more train steps, with a body of one dense layer, beside the memory plan's figures for the
    same model. RSS (what the machine gives) and TensorFlow's allocator (what is alive) both."""
    config = Config(k=k, super_clusters=super_clusters, rotation=rotation, batch_size=batch, lr=0.01)
    image = keras.Input((4, 4, 3))
    backbone = keras.Model(image, keras.layers.Dense(dim)(keras.layers.Flatten()(image)))
    figures = memory_plan.plan(config, 1, backbone)
    start, live_start = _rss(), _live_bytes()
    model = DeeperClusterModel(backbone, config.super_classes, config.sub_classes)
    built, live_built = _rss(), _live_bytes()
    model.compile(optimizer_lib.SGD(config.lr, momentum=config.momentum, weight_decay=config.weight_decay))
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, 4, 4, 3)).astype(np.float32)
    targets = {"super": rng.integers(0, config.super_classes, batch), "sub": rng.integers(0, config.sub_classes, batch),
               "weight": np.ones(batch, np.float32), "index": np.arange(batch)}
    model.fit(images, targets, batch_size=batch, epochs=1, verbose=0)
    steady, live_steady = _rss(), _live_bytes()
    _reset_peak()
    tf.config.experimental.reset_memory_stats("CPU:0")
    model.fit(images, targets, batch_size=batch, epochs=steps, verbose=0)
    peak, live_peak = _peak_rss(), _live_bytes("peak")
    planned = figures["heads"] + figures["optimizer_slots"] + figures["gradients"] + figures["body"]
    return {"planned_weights_bytes": figures["heads"] + figures["body"],
            "planned_slots_bytes": figures["optimizer_slots"], "planned_gradient_bytes": figures["gradients"],
            "live_weights_bytes": live_built - live_start, "live_slots_bytes": live_steady - live_built,
            "live_step_extra_bytes": live_peak - live_steady,
            "rss_weights_bytes": built - start, "rss_weights_and_slots_bytes": steady - start,
            "rss_step_extra_bytes": peak - steady,
            "rss_before_model_bytes": start, "peak_rss_bytes": peak, "peak_over_plan": (peak - start) / planned}


def main(argv: list[str]) -> None:
    options = dict(arg.lstrip("-").split("=") for arg in argv[1:])
    figures = step_memory_figures(int(options.get("k", 64000)), int(options.get("super_clusters", 4)),
                                  int(options.get("dim", 4096)), options.get("rotation", "0") == "1")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main(sys.argv)
