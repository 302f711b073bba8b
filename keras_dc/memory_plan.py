"""The memory a run will need, per replica and per worker, computed before it starts (--dry_run).

Every replica holds the body, the super-class head and the sub-class heads of its group (all S
with one group, S/G with --head_groups=G), one optimizer slot per weight (SGD momentum), one
gradient per weight (with groups: per weight of the body and the super-class head, and one or two
column blocks of a sub-class head, keras_dc.heads) and the activations of its share of the batch.
Each step all-reduces the body's and the super-class head's gradients over all replicas, and a
group's heads' over the group. Each worker also keeps a disk cache of features and fits the PCA in
host memory.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

from keras_dc import heads as heads_lib
from keras_dc.config import Config, ConfigError

FLOAT32 = 4
MILLION = 1_000_000


def head_weights(dim: int, super_classes: int, sub_classes: int, groups: int = 1) -> int:
    """Number of weights of the super-class head and of the routed sub-class heads one replica holds:
    all S, or the S/G of its group."""
    return dim * super_classes + super_classes + super_classes // groups * (dim * sub_classes + sub_classes)


def activation_elements(backbone: keras.Model) -> int:
    """Outputs of every layer of the body for one image: what the forward pass keeps for backward."""
    return int(sum(np.prod(layer.output.shape[1:]) for layer in backbone.layers))


def plan(config: Config, replicas: int, backbone: keras.Model, groups: int = 1) -> dict[str, int]:
    """Bytes of each part of a run of `config` over `replicas` replicas in `groups` groups with this body."""
    dim = int(backbone.output.shape[-1])
    body = int(sum(np.prod(weight.shape) for weight in backbone.weights))
    trainable = int(sum(np.prod(weight.shape) for weight in backbone.trainable_weights))
    heads = head_weights(dim, config.super_classes, config.sub_classes, groups)
    super_head = dim * config.super_classes + config.super_classes
    compute_bytes = _compute_bytes(config)
    per_replica_batch = config.batch_size // replicas
    logits = config.super_classes + config.sub_classes
    cache_bytes = FLOAT32 if config.feature_cache_dtype == "float32" else 2
    return {
        "body": body * FLOAT32,
        "heads": heads * FLOAT32,
        "optimizer_slots": (trainable + heads) * FLOAT32,  # built at any --momentum (keras_dc.optimizer.SGD)
        "gradients": (trainable + super_head + head_gradients(dim, config, replicas, groups)) * FLOAT32,
        "activations": per_replica_batch * (activation_elements(backbone) * compute_bytes + logits * FLOAT32),
        "feature_cache_per_million_images": MILLION * (dim + config.pca_dim) * cache_bytes,
        "pca": 2 * dim * dim * 8,
        "allreduce_all_replicas": (trainable + super_head + (heads - super_head) * (groups == 1))
        * FLOAT32 * (replicas > 1),
        "allreduce_in_group": (heads - super_head) * FLOAT32 * (groups > 1 and replicas // groups > 1),
    }


def head_gradients(dim: int, config: Config, replicas: int, groups: int) -> int:
    """Most sub-class head gradient values a replica holds at once: every head's with one group (Keras'
    optimizer takes all gradients together); with groups, one column block's, and the group's sum of it
    too when the group has several replicas (the train step updates one block after the other)."""
    one_head = dim * config.sub_classes + config.sub_classes
    if groups == 1:
        return config.super_classes * one_head
    columns = heads_lib.block_widths(dim, config.sub_classes, heads_lib.BLOCK_BYTES)[0]
    alive = 2 if replicas // groups > 1 else 1
    return min(config.super_classes // groups * one_head, alive * (dim + 1) * columns)


SYNTHETIC_BYTES_PER_VALUE = 17  # generating --data=synthetic holds float64 noise and images, then uint8 copies


def machine_bytes() -> int:
    """The memory this process may use: the machine's, or its cgroup's limit when lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/sys/fs/cgroup/memory.max") as handle:
            limit = handle.read().strip()
        return min(total, int(limit)) if limit.isdigit() else total
    except OSError:
        return total


def check_host_memory(config: Config) -> None:
    """Refuses, before any work, a run whose in-memory images cannot fit in this machine's memory (an
    OOM kill later would lose the run without a word)."""
    if config.data != "synthetic":
        return
    needed = config.synthetic_size * config.image_size ** 2 * 3 * SYNTHETIC_BYTES_PER_VALUE
    if needed > machine_bytes():
        raise ConfigError("synthetic_size", f"{config.synthetic_size} images of {config.image_size}x"
                          f"{config.image_size} need {needed / 1e9:.1f} GB to generate, more than the "
                          f"{machine_bytes() / 1e9:.1f} GB of this machine")


DEVICE_PARTS = ("body", "heads", "optimizer_slots", "gradients", "activations")


PLANNED_SIZE = 128  # the image size at which check_cpu_training_memory builds the body


def check_cpu_training_memory(config: Config, replicas: int, local_replicas: int, groups: int) -> None:
    """Refuses, before any work, a run whose model and activations cannot fit in this machine's memory
    when it trains on CPUs (a GPU reports its own out-of-memory error, which the tool turns into one line;
    on a CPU the kernel's OOM killer would end the run without a word). The body is built at most
    PLANNED_SIZE pixels wide (a body at 4096 px may not even fit), and its activations scaled by the area:
    at most what the run needs, since weights only grow with the image and activations at least as its area."""
    from keras_dc import backbones

    size = min(config.image_size, PLANNED_SIZE)
    backbone = backbones.build_backbone(config.arch, size, sobel=config.sobel, seed=config.seed)
    figures = plan(dataclasses.replace(config, image_size=size), replicas, backbone, groups)
    compute_bytes = _compute_bytes(config)
    growth = config.batch_size // replicas * activation_elements(backbone) * compute_bytes * (
        (config.image_size / size) ** 2 - 1)
    needed = local_replicas * (sum(figures[key] for key in DEVICE_PARTS) + growth)
    if needed > machine_bytes():
        raise ConfigError("image_size", f"{config.image_size} px at {config.batch_size // replicas} images per "
                          f"replica needs at least {needed / 1e9:.1f} GB to train on this machine's CPUs, more "
                          f"than its {machine_bytes() / 1e9:.1f} GB: lower --image_size or --batch_size "
                          f"(--dry_run prints the plan)")


def describe(config: Config, replicas: int, figures: dict[str, int], groups: int = 1) -> str:
    """The plan as the lines --dry_run prints."""
    device = sum(figures[key] for key in DEVICE_PARTS)
    held = ("the whole model" if groups == 1 else
            f"the body, the super-class head and {config.super_classes // groups} of the sub-class heads")
    rows = [
        f"memory plan: {config.arch} {config.image_size}px, k={config.k}, m={config.super_clusters}: "
        f"S={config.super_classes} heads x {config.sub_classes} outputs; {replicas} replica(s) in {groups} "
        f"head group(s), batch {config.batch_size // replicas} per replica, {config.precision}",
        f"per replica (each replica holds {held}):",
        *(f"  {key:34s} {_gb(figures[key])}" for key in ("body", "heads", "optimizer_slots")),
        f"  {'gradients':34s} {_gb(figures['gradients'])}  (at most: "
        f"{'all alive at once' if groups == 1 else 'a sub-class head column block at a time'})",
        f"  {'activations':34s} {_gb(figures['activations'])}",
        f"  {'total':34s} {_gb(device)}",
        "all-reduced per step (gradients):",
        f"  {'over all replicas':34s} {_gb(figures['allreduce_all_replicas'])}  (body, super-class head"
        f"{', sub-class heads' if groups == 1 else ''})",
        f"  {'over a group of replicas':34s} {_gb(figures['allreduce_in_group'])}  (its sub-class heads)",
        "per worker (host memory and disk):",
        f"  {'feature cache, per 1M images':34s} {_gb(figures['feature_cache_per_million_images'])}"
        f"  (fc features + PCA-reduced rows, on disk)",
        f"  {'pca':34s} {_gb(figures['pca'])}  (D x D float64 moments and eigenvectors; "
        f"N x N when fewer rows than dims)",
    ]
    return "\n".join(rows)


def _compute_bytes(config: Config) -> int:
    return FLOAT32 if config.precision == "float32" else 2


def _gb(size: int) -> str:
    return f"{size / 1e9:10.3f} GB"
