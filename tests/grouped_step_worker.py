"""One worker of tests/test_head_groups.py: two train steps of a model whose heads are owned by groups.

    python tests/grouped_step_worker.py FOLDER   (under TF_CONFIG, one process per replica)

Reads FOLDER/initial.npz (every variable and momentum of the replicated model, by path) and
FOLDER/batches_g<G>.npz (two global batches), takes its worker's slice of each batch, and for G = 4, then
G = 2 builds the grouped model, gives it the initial state, runs two steps and writes
FOLDER/state_g<G>_w<worker>.npz (its variables and momentum buffers) and a JSON line of what it holds.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import step_reference  # noqa: E402
from keras_dc import distribute, train  # noqa: E402

GROUPS = (4, 2)


def main(folder: str) -> None:
    strategy = distribute.get_strategy("multi_worker")
    worker, workers = distribute.worker_position(strategy)
    initial = {key: value for key, value in np.load(os.path.join(folder, "initial.npz")).items()}
    for groups in GROUPS:
        batches = np.load(os.path.join(folder, f"batches_g{groups}.npz"))
        cfg = step_reference.config(folder, super_clusters=1, head_groups=str(groups))
        train.configure_runtime(cfg)
        layout = train.head_layout(cfg, strategy)
        with strategy.scope():
            model = step_reference.build(cfg, layout)
        step_reference.set_state(model, {path: (initial[path], initial[path + ":momentum"])
                                         for path in step_reference.state(model)})
        step = tf.function(lambda images, targets, model=model: strategy.run(model.train_step,
                                                                              args=((images, targets),)))
        for number in range(2):
            rows = slice(worker * len(batches[f"images_{number}"]) // workers,
                         (worker + 1) * len(batches[f"images_{number}"]) // workers)
            targets = {key: batches[f"{key}_{number}"][rows] for key in ("super", "sub", "weight", "index")}
            step(batches[f"images_{number}"][rows], targets)
        final = step_reference.state(model)
        arrays = {**{path: value[0] for path, value in final.items()},
                  **{path + ":momentum": value[1] for path, value in final.items()}}
        np.savez(os.path.join(folder, f"state_g{groups}_w{worker}.npz"), **arrays)
        head = model.get_layer("sub_heads")
        print("HOLDS", json.dumps({"groups": groups, "worker": worker, "heads": list(head.heads),
                                   "variables": [v.path for v in head.weights],
                                   "bytes": int(sum(np.prod(v.shape) * 4 for v in head.weights))}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
