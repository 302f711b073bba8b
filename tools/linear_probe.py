"""Linear probes per conv layer, k-NN and cluster quality of a frozen backbone, against labels.

    python tools/linear_probe.py --workdir=/tmp/kdc_demo --output=/tmp/kdc_demo/probe.json
    python tools/linear_probe.py --random_init --arch=small --image_size=32 --train_data=digits

The backbone comes from a trained --workdir, an exported --backbone (.keras) or
--random_init (the baseline). Without --val_data a stratified --val_fraction of
--train_data is held out. Results go to --output as JSON and to stdout as a table.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags, logging

from keras_dc import cli, tool_inputs
from keras_dc.config import (COUNT, DECAY, FRACTION, LEARNING_RATE, MOMENTUM, OPTIONAL_COUNT, SEED, ConfigError, Range,
                             check_flag_numbers, result_or_exit)

FLAGS = flags.FLAGS
# The reference's settings (linear_classif_layers.sh, conv13.sh), taken by --protocol=reference unless a flag
# overrides them; a VGG-16 at 224 px also takes each layer's lr of the paper (keras_dc.probe.REFERENCE_VGG16),
# any other network eval_linear.py's default lr.
REFERENCE_DEFAULTS = {"lrs": ["0.05"], "epochs": 100, "batch_size": 256, "weight_decay": 1e-5}


def define_flags() -> None:
    """Declares the tool's flags; only __main__ calls this."""
    tool_inputs.define_flags(flags, "probes")
    flags.DEFINE_string("layers", "block_last", "Probe the last conv of each block (block_last), or all.")
    flags.DEFINE_integer("max_dim", 10000, "Average-pool each layer until it has at most this many values.")
    flags.DEFINE_list("lrs", ["0.1", "0.01", "0.001", "0.0001"], "Candidate SGD learning rates (several need --kfold).")
    flags.DEFINE_integer("kfold", 3, "Folds of the cross-validation that picks each layer's learning rate.")
    flags.DEFINE_integer("epochs", 30, "Probe training epochs.")
    flags.DEFINE_integer("batch_size", 128, "Probe training batch size.")
    flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
    flags.DEFINE_float("weight_decay", 1e-4, "SGD weight decay.")
    flags.DEFINE_integer("knn_k", 20, "Neighbours of the k-NN classifier.")
    flags.DEFINE_float("knn_temperature", 0.07, "Neighbour weights are exp(cosine / temperature).")
    flags.DEFINE_integer("kmeans_k", 0, "Clusters of the k-means scored against labels (0: number of classes).")
    flags.DEFINE_integer("kmeans_pca_dim", 64, "PCA dimension before that k-means.")
    flags.DEFINE_integer("seed", 0, "Seed of the split, folds, probe batches, k-means and --random_init.")
    flags.DEFINE_string("output", "", "Where to write the JSON report (default: none, table only).")
    flags.DEFINE_bool("per_layer_baseline", False, "Also run one probe per layer, to time the shared pass.")
    flags.DEFINE_enum("protocol", "fast", ["fast", "reference"],
                      "fast: standardised cached centre-view features, k-fold lr choice, cosine schedule. "
                      "reference: the paper's eval_linear.py (raw activations, a VGG-16 at 224 pooled with its "
                      "fixed RegLog windows, random resized crop + flip each epoch, coupled decay, "
                      "lr_0/sqrt(1 + lr_0*wd*t)); unless given, --epochs=100 --batch_size=256 "
                      "--weight_decay=1e-5 and the paper's lr of each VGG-16 layer at 224 (else 0.05).")
    flags.DEFINE_float("min_crop_scale", 0.08, "Smallest crop area of the reference protocol's training view.")
    flags.DEFINE_bool("flip", True, "Horizontal flips in the reference protocol's training view.")


# Every numeric flag and the values it accepts, checked in one place (config.check_numbers).
RANGES = {**tool_inputs.RANGES, "max_dim": COUNT, "lrs": LEARNING_RATE, "kfold": Range(0, 1000),
          "epochs": Range(1, 10**6), "batch_size": Range(1, 2**20), "momentum": MOMENTUM, "weight_decay": DECAY,
          "knn_k": COUNT, "knn_temperature": Range(0, 1000, low_open=True), "kmeans_k": OPTIONAL_COUNT,
          "kmeans_pca_dim": Range(1, 2**16), "seed": SEED, "min_crop_scale": FRACTION}


def settings_from_flags():
    """The evaluation settings the flags describe; raises ConfigError naming a wrong flag.

    Everything but --layers is checked before TensorFlow loads, so a typo fails at once.
    """
    paper_lrs = FLAGS.protocol == "reference" and not FLAGS["lrs"].present
    if FLAGS.protocol == "reference":
        for flag, value in REFERENCE_DEFAULTS.items():
            if not FLAGS[flag].present:
                FLAGS[flag].value = value
    tool_inputs.check_inputs(FLAGS.workdir, FLAGS.backbone, FLAGS.random_init, FLAGS.val_fraction)
    check_flag_numbers(FLAGS, RANGES)
    lrs = tuple(float(lr) for lr in FLAGS.lrs)
    if not lrs:
        raise ConfigError("lrs", "needs one or more positive learning rates")
    if len(lrs) > 1 and FLAGS.kfold < 2:
        raise ConfigError("kfold", f"choosing among {len(lrs)} --lrs needs --kfold of 2 or more")
    if len(lrs) > 1 and FLAGS.protocol == "reference":
        raise ConfigError("lrs", "--protocol=reference trains with one learning rate")
    from keras_dc.backbones import TAP_CHOICES
    from keras_dc.probe import EvaluationSettings, ProbeSettings

    if FLAGS.layers not in TAP_CHOICES:
        raise ConfigError("layers", f"unknown value {FLAGS.layers!r}; choose one of {', '.join(TAP_CHOICES)}")
    probe = ProbeSettings(lrs=lrs, kfold=FLAGS.kfold, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
                          momentum=FLAGS.momentum, weight_decay=FLAGS.weight_decay, seed=FLAGS.seed,
                          protocol=FLAGS.protocol, min_crop_scale=FLAGS.min_crop_scale, flip=FLAGS.flip,
                          paper_lrs=paper_lrs)
    return EvaluationSettings(layers=FLAGS.layers, max_dim=FLAGS.max_dim, val_fraction=FLAGS.val_fraction,
                              knn_k=FLAGS.knn_k, knn_temperature=FLAGS.knn_temperature, kmeans_k=FLAGS.kmeans_k,
                              kmeans_pca_dim=FLAGS.kmeans_pca_dim, probe=probe)


def model_clusters(trained, num_images: int):
    """The workdir's latest cluster ids when the probe's training data is the training data, else None."""
    from keras_dc import workdir

    if trained is None or FLAGS.train_data not in ("", trained.data):
        return None
    latest = workdir.latest_assignment(FLAGS.workdir)
    if latest is None or len(latest[1].super_ids) != num_images:
        return None
    return latest[1].cluster_ids(trained.sub_classes)


def print_report(report: dict) -> None:
    """The report as a table: one row per layer, then k-NN and cluster quality, and lrs chosen at the grid's edge."""
    from keras_dc.probe import grid_edge_choices

    print(f"\n{'layer':16s} {'dim':>6s} {'pool':>4s} {'lr':>7s} {'top1':>7s} {'top5':>7s}")
    for name, row in report["layers"].items():
        print(f"{name:16s} {row['dim']:6d} {row['pool']:4d} {row['lr']:7.3g} {100 * row['top1']:7.2f} "
              f"{100 * row['top5']:7.2f}")
    knn = report["knn"]
    print(f"{'k-NN (features)':16s} {'':6s} {'':4s} {'':7s} {100 * knn['top1']:7.2f} {100 * knn['top5']:7.2f}"
          f"   (k={knn['k']}, weights exp(cos/{knn['temperature']:g}))")
    for name, row in report["clusters"].items():
        print(f"clusters {name:7s} ({row['num_clusters']} clusters): NMI {row['nmi']:.3f}  ARI {row['ari']:.3f}  "
              f"purity {row['purity']:.3f}  Hungarian accuracy {row['accuracy']:.3f}")
    timing = report["timing"]
    print(f"time: extraction {timing['extract_s']:.1f} s, probes {timing['probe_s']:.1f} s, "
          f"total {timing['total_s']:.1f} s")
    for name, edge in grid_edge_choices(report["layers"]).items():
        print(f"{name}: the chosen lr is the {edge} of --lrs; a grid reaching past it may probe it better")


def run() -> dict:
    """Loads the backbone and data the flags name, evaluates, and adds the settings to the report."""
    settings = settings_from_flags()
    from keras_dc import backbones, probe, progress, workdir
    from keras_dc.config import errors_as_flags

    trained = tool_inputs.trained_config(FLAGS.workdir)
    backbone, description = tool_inputs.load_backbone(FLAGS.workdir, FLAGS.backbone, FLAGS.random_init,
                                                      FLAGS.arch, FLAGS.image_size, FLAGS.sobel, FLAGS.seed)
    image_size = backbone.input_shape[1]
    train_source, val_source = tool_inputs.load_train_val(
        FLAGS.train_data, FLAGS.val_data, image_size, trained, FLAGS.tfds_data_dir, FLAGS.synthetic_size,
        FLAGS.seed, FLAGS.workdir)
    names = backbones.conv_tap_layers(backbone, settings.layers)
    clusters = model_clusters(trained, train_source.num_images)
    with errors_as_flags({probe.PoolingError: "max_dim", probe.FoldError: "kfold"}), \
            progress.reporting(progress.AUTO, FLAGS.progress_seconds):
        report = probe.evaluate_backbone(backbone, names, train_source, val_source, settings, clusters)
        baseline = (probe.per_layer_baseline(backbone, names, train_source, val_source, settings)
                    if FLAGS.per_layer_baseline else None)
    if baseline:
        report["per_layer_baseline"] = {**baseline, "speedup": baseline["timing"]["total_s"] / (
            report["timing"]["extract_s"] + report["timing"]["probe_s"])}
    report["config"] = {"backbone": description, "train_data": train_source.description,
                        "val_data": val_source.description if val_source else f"held out {settings.val_fraction}",
                        "image_size": image_size,
                        "augmentation": "none (centre view)" if FLAGS.protocol == "fast" else
                        "random resized crop" + (" + flip" if FLAGS.flip else "") + " (training), centre view (val)",
                        "settings": dataclasses.asdict(settings)}
    if FLAGS.output:
        workdir.write_json(FLAGS.output, report)
    return report


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    report = result_or_exit(run)
    print_report(report)
    if "per_layer_baseline" in report:
        print(f"one run per layer: {report['per_layer_baseline']['timing']['total_s']:.1f} s, "
              f"{report['per_layer_baseline']['speedup']:.2f}x the shared pass")
    if FLAGS.output:
        print(f"report: {FLAGS.output}")


def entry_point() -> None:
    """The program, run as `python tools/linear_probe.py` or as the console script `keras-dc-probe`."""
    define_flags()
    cli.run(main, __name__)


if __name__ == "__main__":
    entry_point()
