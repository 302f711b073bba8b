"""One worker of tests/test_head_groups.py: two train steps of a model whose heads are owned by groups.

    python tests/grouped_step_worker.py FOLDER   (under TF_CONFIG, one process per replica)

Reads FOLDER/initial.npz (every variable and momentum of the replicated model, by path) and
FOLDER/batches_g<G>.npz (two global batches), takes its worker's slice of each batch, and for G = 4, G = 2,
then G = 4 with heads stored in blocks of 2 columns builds the grouped model, gives it the initial state,
runs two steps and writes FOLDER/state_<variant>_w<worker>.npz (its variables and momentum buffers, a
blocked head's joined into the whole head's) and a JSON line of what it holds.
"""

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import step_reference  # noqa: E402
from keras_dc import distribute, heads, train  # noqa: E402

VARIANTS = {"g4": (4, None), "g2": (2, None), "g4_blocks": (4, 2)}  # name: (G, columns of a head's block)


def main(folder: str) -> None:
    strategy = distribute.get_strategy("multi_worker")
    worker, workers = distribute.worker_position(strategy)
    initial = {key: value for key, value in np.load(os.path.join(folder, "initial.npz")).items()}
    dim = next(value.shape[0] for key, value in initial.items() if key.endswith("sub_heads/kernel_0"))
    for variant, (groups, columns) in VARIANTS.items():
        batches = np.load(os.path.join(folder, f"batches_g{groups}.npz"))
        cfg = step_reference.config(folder, super_clusters=1, head_groups=str(groups))
        train.configure_runtime(cfg)
        layout = train.head_layout(cfg, strategy)
        heads.BLOCK_BYTES = 4 * dim * (columns or 10**6)
        with strategy.scope():
            model = step_reference.build(cfg, layout)
        step_reference.set_state(model, {path: tuple(_block(initial, path, suffix, columns)
                                                     for suffix in ("", ":momentum"))
                                         for path in step_reference.state(model)})
        step = tf.function(lambda images, targets, model=model: strategy.run(model.train_step,
                                                                              args=((images, targets),)))
        for number in range(2):
            rows = slice(worker * len(batches[f"images_{number}"]) // workers,
                         (worker + 1) * len(batches[f"images_{number}"]) // workers)
            targets = {key: batches[f"{key}_{number}"][rows] for key in ("super", "sub", "weight", "index")}
            step(batches[f"images_{number}"][rows], targets)
        arrays = {}
        for path, value in sorted(step_reference.state(model).items(), key=lambda item: _block_order(item[0])):
            for suffix, array in zip(("", ":momentum"), value):
                whole = _whole(path) + suffix
                arrays[whole] = np.concatenate([arrays[whole], array], axis=-1) if whole in arrays else array
        np.savez(os.path.join(folder, f"state_{variant}_w{worker}.npz"), **arrays)
        head = model.get_layer("sub_heads")
        print("HOLDS", json.dumps({"variant": variant, "groups": groups, "worker": worker, "heads": list(head.heads),
                                   "variables": [v.path for v in head.weights],
                                   "bytes": int(sum(np.prod(v.shape) * 4 for v in head.weights))}), flush=True)


def _whole(path: str) -> str:
    """The path of the whole head's variable of a block's."""
    return re.sub(r"_block\d+$", "", path)


def _block_order(path: str) -> tuple:
    block = re.search(r"_block(\d+)$", path)
    return _whole(path), int(block.group(1)) if block else 0


def _block(initial: dict, path: str, suffix: str, columns: int | None) -> np.ndarray:
    """The initial value of `path` (a block of `columns` columns of a whole head, or a whole variable)."""
    value = initial[_whole(path) + suffix]
    block = _block_order(path)[1]
    return value[..., block * columns:(block + 1) * columns] if path != _whole(path) else value


if __name__ == "__main__":
    main(sys.argv[1])
