"""Pictures of a run's clusters: image grids (PNG and TensorBoard) and an embedding-projector export.

A grid has one row per selected cluster and one column per sampled member, like
the paper's cluster figure; images are the centre views the network sees.
The projector export (features.tsv, metadata.tsv, sprite.png and
projector_config.pbtxt) sits beside the grids' TensorBoard events, so that
TensorBoard lists it under the same run.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins import projector

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

from keras_dc import cluster_statistics, data, workdir as workdir_lib
from keras_dc.sources import ImageSource, load_source
from keras_dc.workdir import Assignment, WorkdirError

SELECTIONS = ("largest", "smallest", "random")
GRID_PADDING = 2
BACKGROUND = 255
SPRITE_MAX_SIDE = 8192  # TensorBoard's limit on the sprite image


def select_clusters(cluster_ids: np.ndarray, how: str, count: int, seed: int = 0) -> np.ndarray:
    """Up to `count` non-empty cluster ids: the largest, the smallest (ties by id) or a random set."""
    if how not in SELECTIONS:
        raise ValueError(f"unknown selection {how!r}; choose one of {', '.join(SELECTIONS)}")
    ids, sizes = np.unique(cluster_ids, return_counts=True)
    if how == "random":
        return np.random.default_rng(seed).permutation(ids)[:count]
    order = np.argsort(-sizes if how == "largest" else sizes, kind="stable")
    return ids[order][:count]


def sample_members(cluster_ids: np.ndarray, clusters: np.ndarray, samples: int, seed: int = 0) -> list[np.ndarray]:
    """For each cluster, up to `samples` of its image indices drawn without replacement."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(cluster_ids == cluster))[:samples] for cluster in clusters]


def load_views(source: ImageSource, indices: np.ndarray, image_size: int, batch_size: int = 256) -> np.ndarray:
    """The float32 centre views (what the backbone sees) of the given images, in order."""
    dataset = data.clustering_dataset(source, image_size, batch_size, indices)
    return np.concatenate([batch.numpy() for batch in dataset]) if len(indices) else np.zeros(
        (0, image_size, image_size, 3), np.float32)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Rounds and clips float pixels in [0, 255] to uint8."""
    return np.clip(np.round(images), 0, 255).astype(np.uint8)


def image_grid(rows: list[np.ndarray], columns: int, padding: int = GRID_PADDING) -> np.ndarray:
    """Tiles rows of (n, H, W, 3) uint8 images into one image, `columns` cells wide; empty cells stay white.

    The result is (rows * (H + padding) + padding, columns * (W + padding) + padding, 3).
    """
    height, width = rows[0].shape[1:3]
    grid = np.full((len(rows) * (height + padding) + padding, columns * (width + padding) + padding, 3),
                   BACKGROUND, np.uint8)
    for row, images in enumerate(rows):
        for column, image in enumerate(images[:columns]):
            top, left = padding + row * (height + padding), padding + column * (width + padding)
            grid[top:top + height, left:left + width] = image
    return grid


def save_png(image: np.ndarray, path: str) -> None:
    """Writes a (H, W, 3) uint8 array as a PNG file (to a new name, then renamed: no planted link is followed)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    workdir_lib.atomic_write_bytes(path, buffer.getvalue())


def write_image_summaries(logdir: str, grids: dict[str, np.ndarray], step: int) -> None:
    """Logs each grid as a TensorBoard image named clusters/<name>."""
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default(step=step):
        for name, grid in grids.items():
            tf.summary.image(f"clusters/{name}", grid[None], max_outputs=1)
    writer.close()


def sprite(images: np.ndarray) -> tuple[np.ndarray, int]:
    """A square, unpadded sprite of the images (row-major, as TensorBoard reads it) and its thumbnail side."""
    side = math.ceil(math.sqrt(len(images)))
    thumb = min(images.shape[1], SPRITE_MAX_SIDE // side)
    if thumb != images.shape[1]:
        images = np.stack([np.asarray(Image.fromarray(image).resize((thumb, thumb), Image.Resampling.BILINEAR))
                           for image in images])
    rows = [images[start:start + side] for start in range(0, side * side, side)]
    return image_grid(rows, side, padding=0), thumb


def export_projector(folder: str, features: np.ndarray, metadata: dict[str, np.ndarray],
                     thumbnails: np.ndarray) -> None:
    """Writes features.tsv, metadata.tsv (one column per metadata entry), sprite.png and projector_config.pbtxt,
    each to a new name, then renamed."""
    table = io.BytesIO()
    np.savetxt(table, features, delimiter="\t", fmt="%.6g")
    workdir_lib.atomic_write_bytes(os.path.join(folder, "features.tsv"), table.getvalue())
    columns = list(metadata)
    lines = ["\t".join(columns)] + ["\t".join(str(metadata[name][row]) for name in columns)
                                    for row in range(len(features))]
    workdir_lib.atomic_write_bytes(os.path.join(folder, "metadata.tsv"), ("\n".join(lines) + "\n").encode())
    image, thumb = sprite(thumbnails)
    save_png(image, os.path.join(folder, "sprite.png"))
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = "features"
    embedding.tensor_path = "features.tsv"
    embedding.metadata_path = "metadata.tsv"
    embedding.sprite.image_path = "sprite.png"
    embedding.sprite.single_image_dim.extend([thumb, thumb])
    workdir_lib.atomic_write_bytes(os.path.join(folder, "projector_config.pbtxt"),
                                   text_format.MessageToString(config).encode())


def cluster_grids(source: ImageSource, cluster_ids: np.ndarray, image_size: int, selections: list[str],
                  count: int, samples: int, seed: int = 0) -> dict[str, dict]:
    """For each selection, the grid image and the clusters of its rows ({"grid", "clusters", "sizes"})."""
    grids = {}
    sizes = np.bincount(cluster_ids)
    for how in selections:
        clusters = select_clusters(cluster_ids, how, count, seed)
        members = sample_members(cluster_ids, clusters, samples, seed)
        views = to_uint8(load_views(source, np.concatenate(members), image_size))
        rows = np.split(views, np.cumsum([len(row) for row in members])[:-1])
        grids[how] = {"grid": image_grid(rows, samples), "clusters": clusters.tolist(),
                      "sizes": sizes[clusters].tolist()}
    return grids


def projector_metadata(indices: np.ndarray, cluster_ids: np.ndarray, source: ImageSource) -> dict[str, np.ndarray]:
    """Projector columns of the sampled images: index, cluster and, when the data has them, the label."""
    metadata = {"index": indices, "cluster": cluster_ids[indices]}
    if source.labels is not None:
        labels = source.labels[indices]
        metadata["label"] = np.array(source.class_names)[labels] if source.class_names else labels
    return metadata


def latest_cycle(workdir: str) -> tuple[int, Assignment]:
    """The number and assignments of the workdir's latest re-clustering."""
    latest = workdir_lib.latest_assignment(workdir)
    if latest is None:
        raise WorkdirError(f"{workdir} has no assignments/cycle_*.npz yet")
    return latest


def projector_features(backbone: keras.Model, views: np.ndarray, assignment: Assignment) -> np.ndarray:
    """Backbone features of the views, mapped like the clustering (latest PCA, then L2) when the cycle has a PCA."""
    features = np.asarray(backbone.predict(views, batch_size=256, verbose=0), np.float32)
    return assignment.pca.reduce(features) if assignment.pca is not None else features


def image_statistic_codes(source: ImageSource, indices: np.ndarray, image_size: int, seed: int = 0) -> dict:
    """cluster_statistics' codes of the centre views of the given images, read a batch at a time."""
    raw = [cluster_statistics.raw_statistics(batch.numpy())
           for batch in data.clustering_dataset(source, image_size, 256, indices)]
    return cluster_statistics.statistic_codes(
        {name: np.concatenate([batch[name] for batch in raw]) for name in cluster_statistics.STATISTICS}, seed=seed)


def statistics_of_run(workdir: str, source: ImageSource, sub_classes: int, image_size: int, samples: int,
                      seed: int = 0) -> dict:
    """What the first (random network) and the latest clustering follow: their NMI with the labels and
    with image statistics on `samples` random images, and their cluster sizes (all images)."""
    indices = np.sort(np.random.default_rng(seed).choice(source.num_images, min(samples, source.num_images),
                                                         replace=False))
    codes = image_statistic_codes(source, indices, image_size, seed)
    labels = source.labels[indices] if source.labels is not None else None
    report = {"images": len(indices)}
    for which in ("first", "latest"):
        cycle, assignment = workdir_lib.latest_assignment(workdir, first=which == "first")
        cluster_ids = assignment.cluster_ids(sub_classes)
        report[which] = {"cycle": cycle, "nmi": cluster_statistics.nmi_with(cluster_ids[indices], codes, labels),
                         "sizes": cluster_statistics.cluster_sizes(cluster_ids)}
    return report


def visualize_run(workdir: str, selections: list[str], count: int, samples: int, projector_samples: int,
                  output_dir: str, seed: int = 0, statistics_samples: int = 0) -> dict:
    """PNG grids in output_dir (each with a JSON of its clusters and their sizes beside it), the same as
    TensorBoard images, a projector export of a random sample and, with `statistics_samples`,
    statistics_of_run in output_dir/cluster_statistics.json.

    TensorBoard files go to workdir/tensorboard/clusters; returns what was drawn and written.
    """
    config = workdir_lib.read_run(workdir).config
    cycle, assignment = latest_cycle(workdir)
    cluster_ids = assignment.cluster_ids(config.sub_classes)
    source = load_source(config.data, config.image_size, config.tfds_data_dir, config.synthetic_size, config.seed,
                         config.max_image_mb, workdir_lib.data_index(workdir))  # the run's indices, not today's
    grids = cluster_grids(source, cluster_ids, config.image_size, selections, count, samples, seed)
    for how, entry in grids.items():
        entry["png"] = os.path.join(output_dir, f"{how}.png")
        save_png(entry["grid"], entry["png"])
        workdir_lib.write_json(os.path.splitext(entry["png"])[0] + ".json",  # what the picture shows, beside it
                               {"workdir": workdir, "cycle": cycle, "selection": how, "clusters": entry["clusters"],
                                "sizes": entry["sizes"], "samples": samples, "seed": seed})
    logdir = workdir_lib.tensorboard_dir(workdir, "clusters")
    write_image_summaries(logdir, {how: entry.pop("grid") for how, entry in grids.items()}, cycle)
    summary = {"cycle": cycle, "grids": grids, "tensorboard": logdir}
    if projector_samples:
        summary["projector_images"] = export_run_sample(workdir, source, assignment, cluster_ids,
                                                        config.image_size, projector_samples, logdir, seed)
    if statistics_samples:
        summary["statistics"] = statistics_of_run(workdir, source, config.sub_classes, config.image_size,
                                                  statistics_samples, seed)
        summary["statistics"]["json"] = os.path.join(output_dir, "cluster_statistics.json")
        workdir_lib.write_json(summary["statistics"]["json"], {"workdir": workdir, "seed": seed,
                                                               **summary["statistics"]})
    return summary


def export_run_sample(workdir: str, source: ImageSource, assignment: Assignment, cluster_ids: np.ndarray,
                      image_size: int, count: int, folder: str, seed: int = 0) -> int:
    """Projector export of `count` random images with the workdir's exported backbone; returns the number."""
    path = workdir_lib.existing_backbone(workdir)
    indices = np.sort(np.random.default_rng(seed).choice(source.num_images, min(count, source.num_images),
                                                         replace=False))
    views = load_views(source, indices, image_size)
    features = projector_features(workdir_lib.load_backbone(path), views, assignment)
    export_projector(folder, features, projector_metadata(indices, cluster_ids, source), to_uint8(views))
    return len(indices)
