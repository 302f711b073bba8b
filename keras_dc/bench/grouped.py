"""The large-heads train step on local workers, heads replicated (G = 1) or owned by groups: its images/s
and the bytes its collectives move, counted from the ops of the traced step (not estimated).

    python tools/launch_local.py --workers=4 --program=keras_dc/bench/grouped.py -- --groups=4
    python tools/launch_local.py --workers=4 --program=keras_dc/bench/grouped.py -- --groups=4 --memory_k=64000

tools/benchmark.py runs the first for G = 1 and G = 4 on 4 local workers (`grouped_figures`); the
second reports what TensorFlow's allocator holds per worker with the heads of docs/scaling.md.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import tensorflow as tf

import keras_dc  # noqa: F401  (selects the TensorFlow backend)

from keras_dc import distribute, head_groups, train
from keras_dc.config import Config

RESULT_PREFIX = "GROUPED_RESULT "
COLLECTIVES = ("CollectiveReduceV2", "CollectiveReduce", "CollectiveGatherV2", "CollectiveBcastSendV2",
               "CollectiveAllToAllV2", "NcclAllReduce")


def collective_bytes(graph: tf.Graph) -> dict[str, int]:
    """Bytes that the step's collective ops reduce, by reach: over all replicas, or over a group of
    replicas (the head groups' keys); its nested functions (conditions, loops) included."""
    counts = {"all_replicas": 0, "in_group": 0}
    for operation in _operations(graph):
        if operation.type not in COLLECTIVES:
            continue
        value = operation.inputs[0]
        size = int(np.prod(value.shape.as_list())) * value.dtype.size
        key = tf.get_static_value(operation.inputs[2]) if operation.type.endswith("V2") else None
        counts["in_group" if key is not None and key >= head_groups.GROUP_KEY_BASE else "all_replicas"] += size
    return counts


def _operations(graph: tf.Graph):
    yield from graph.get_operations()
    # Private: the traced functions a graph calls (a tf.cond's branches, say) have no public accessor.
    for function in getattr(graph, "_functions", {}).values():
        inner = getattr(function, "graph", None)
        if inner is not None:
            yield from _operations(inner)


def config(groups: int, k: int = 16000, super_clusters: int = 4, batch: int = 64) -> Config:
    """tools/benchmark.py's large heads (k = 16,000, m = 4, rotation: S = 16 x 4,000) on the small body."""
    return Config(data="synthetic", arch="small", image_size=32, batch_size=batch, k=k, super_clusters=super_clusters,
                  rotation=True, head_groups=str(groups), verbose=0)


def measure(groups: int, steps: int, **sizes) -> dict[str, float]:
    """This worker's figures of `steps` timed steps on a cached batch of its group's super-classes."""
    strategy = distribute.get_strategy("multi_worker")
    cfg = config(groups, **sizes)
    train.configure_runtime(cfg)
    layout = train.head_layout(cfg, strategy)
    with strategy.scope():
        model = train.build_model(cfg, sync_batchnorm=True, layout=layout)
    local = cfg.batch_size // strategy.num_replicas_in_sync
    rng = np.random.default_rng(layout.group)
    images = tf.constant(rng.uniform(0, 255, (local, cfg.image_size, cfg.image_size, 3)).astype(np.float32))
    targets = {"super": tf.constant(rng.choice(list(layout.owned), local).astype(np.int32)),
               "sub": tf.constant(rng.integers(0, cfg.sub_classes, local).astype(np.int32)),
               "weight": tf.ones([local]), "index": tf.range(local)}
    step = tf.function(lambda x, y: strategy.run(model.train_step, args=((x, y),)))
    counts = collective_bytes(step.get_concrete_function(images, targets).graph)
    for _ in range(2):
        float(step(images, targets)["loss"])
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(images, targets)["loss"]
    float(loss)
    seconds = time.perf_counter() - start
    return {"groups": groups, "worker": distribute.worker_position(strategy)[0],
            "images_per_s": steps * cfg.batch_size / seconds, "allreduce_bytes_all_replicas": counts["all_replicas"],
            "allreduce_bytes_in_group": counts["in_group"]}


def grouped_figures(steps: int, workers: int = 4) -> dict[str, float]:
    """The large-heads step on `workers` local workers with G = 1 and G = workers, same global batch:
    images/s, the bytes all-reduced over all replicas per step, and what the body and the super-class
    head alone would all-reduce (their gradients)."""
    import os

    from keras_dc import backbones
    from keras_dc.bench import local_cluster

    figures = {}
    for groups in (1, workers):
        lines: list[str] = []
        command = local_cluster.python_command(os.path.abspath(__file__), [f"--groups={groups}", f"--steps={steps}"])
        status = local_cluster.run_local_cluster(command, workers, write=lines.append)
        if status:
            raise RuntimeError(f"the grouped benchmark failed ({status}): " + "\n".join(lines[-20:]))
        results = [json.loads(line.split(RESULT_PREFIX, 1)[1]) for line in lines if RESULT_PREFIX in line]
        name = "replicated" if groups == 1 else "grouped"
        figures[f"{name}_images_per_s"] = min(result["images_per_s"] for result in results)
        figures[f"{name}_allreduce_bytes_per_step"] = float(max(r["allreduce_bytes_all_replicas"] for r in results))
    cfg = config(workers)
    body = backbones.build_backbone(cfg.arch, cfg.image_size)
    dim = int(body.output.shape[-1])
    figures["body_and_super_head_gradient_bytes"] = 4.0 * (
        int(sum(np.prod(w.shape) for w in body.trainable_weights)) + dim * cfg.super_classes + cfg.super_classes)
    return figures


def memory_figures(groups: int, k: int, super_clusters: int, dim: int, rotation: bool, batch: int = 32,
                   steps: int = 3) -> dict[str, float]:
    """What TensorFlow's allocator holds on this worker for heads of `k`, `super_clusters` on `dim`-d
    features with a one-layer body (keras_dc.bench.heads' model): weights and optimizer slots once built
    and stepped, and the peak of `steps` more steps above them (the gradients alive at once)."""
    import keras

    from keras_dc import optimizer as optimizer_lib
    from keras_dc.bench.heads import _live_bytes
    from keras_dc.model import DeeperClusterModel

    strategy = distribute.get_strategy("multi_worker")
    cfg = Config(k=k, super_clusters=super_clusters, rotation=rotation, batch_size=batch, lr=0.01,
                 head_groups=str(groups))
    layout = train.head_layout(cfg, strategy)
    start = _live_bytes()
    with strategy.scope():
        image = keras.Input((4, 4, 3))
        body = keras.Model(image, keras.layers.Dense(dim)(keras.layers.Flatten()(image)))
        model = DeeperClusterModel(body, cfg.super_classes, cfg.sub_classes, layout)
        model.compile(optimizer_lib.SGD(cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay))
        model.optimizer.build(model.optimized_variables)
    local = batch // strategy.num_replicas_in_sync
    rng = np.random.default_rng(layout.group)
    images = tf.constant(rng.normal(size=(local, 4, 4, 3)).astype(np.float32))
    targets = {"super": tf.constant(rng.choice(list(layout.owned), local).astype(np.int32)),
               "sub": tf.constant(rng.integers(0, cfg.sub_classes, local).astype(np.int32)),
               "weight": tf.ones([local]), "index": tf.range(local)}
    step = tf.function(lambda: strategy.run(model.train_step, args=((images, targets),)))
    float(step()["loss"])
    held = _live_bytes() - start
    tf.config.experimental.reset_memory_stats("CPU:0")
    for _ in range(steps):
        float(step()["loss"])
    head = model.get_layer("sub_heads")
    return {"groups": groups, "worker": distribute.worker_position(strategy)[0],
            "heads_held": len(head.heads), "weights_and_slots_bytes": held,
            "step_peak_over_them_bytes": _live_bytes("peak") - start - held,
            "sub_head_bytes": int(sum(np.prod(v.shape) for v in head.weights)) * 4,
            "body_bytes": int(sum(np.prod(v.shape) for v in body.weights)) * 4}


def main(argv: list[str]) -> None:
    options = dict(arg.lstrip("-").split("=") for arg in argv[1:])
    groups = int(options.get("groups", 1))
    if "memory_k" in options:
        figures = memory_figures(groups, int(options["memory_k"]), int(options.get("super_clusters", 4)),
                                 int(options.get("dim", 4096)), options.get("rotation", "0") == "1")
    else:
        figures = measure(groups, int(options.get("steps", 20)))
    print(RESULT_PREFIX + json.dumps(figures), flush=True)


if __name__ == "__main__":
    main(sys.argv)
