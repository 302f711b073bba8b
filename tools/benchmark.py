"""Measures keras-dc's speed as ratios to references run in the same process.

    python tools/benchmark.py --quick --output=/tmp/kdc_bench.json

--quick takes about 10 minutes on 2 shared CPU cores; --size=smoke only checks that everything runs.

Keys of the JSON (ratios: higher is better unless marked "time ratio"):
input_pipeline_ratio, step_vs_plain_keras, matmul_utilization, extraction_vs_predict,
clustering_vs_faiss (time ratio), recluster_vs_epoch (time ratio), bf16_speedup,
heads_step_ratio, step_vs_plain_keras_large_heads, large_heads_update_vs_plain_step (time ratio),
pca_vs_faiss_small_n (time ratio),
plus the raw images/s and seconds behind each. See docs/performance.md.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags, logging

from keras_dc import cli

FLAGS = flags.FLAGS


# Images for the small net, its train steps (vgg16_bn: half), vgg16_bn batch, clustering points and k.
# Steps are enough for a steady rate (12 gave +-10%); clustering has k/m = 250 centroids per group so
# that, as in real runs, k-means and not start-up dominates.
SIZES = {
    "smoke": {"images": 256, "steps": 4, "vgg_batch": 4, "points": 2000, "clusters": 40},
    "quick": {"images": 2560, "steps": 40, "vgg_batch": 32, "points": 100000, "clusters": 1000},
    "full": {"images": 8192, "steps": 120, "vgg_batch": 32, "points": 400000, "clusters": 4000},
}


def define_flags() -> None:
    flags.DEFINE_bool("quick", False, "A run of about 10 minutes on 2 CPU cores (same as --size=quick).")
    flags.DEFINE_enum("size", "full", list(SIZES), "How much work: smoke (a test that it runs), quick, full.")
    flags.DEFINE_string("output", "", "Write the figures to this JSON file.")
    flags.DEFINE_bool("deterministic", True, "Deterministic ops, as training uses by default.")
    flags.DEFINE_bool("jit_compile", False, "Compile the DeeperCluster train step with XLA (train.py's --jit_compile).")
    flags.DEFINE_bool("heads_only", False, "Only the figures of the routed heads and of the PCA of few rows.")


def run(size: str, deterministic: bool, jit_compile: bool = False, heads_only: bool = False) -> dict[str, float]:
    """Every measurement of the issue, with the ratios computed from them."""
    from keras_dc import train
    from keras_dc.bench import benchmark, grouped, heads
    from keras_dc.config import Config
    from keras_dc.sources import synthetic_source

    sizes = SIZES[size]
    steps = sizes["steps"]
    small = Config(workdir="", data="synthetic", arch="small", image_size=32, batch_size=64, k=40,
                   super_clusters=2, pca_dim=64, kmeans_iters=10, deterministic=deterministic,
                   jit_compile=jit_compile, verbose=0)
    train.configure_runtime(small)
    source = synthetic_source(sizes["images"], small.image_size)
    figures = heads.heads_step_figures(small, source, steps)
    figures.update(heads.pca_small_n_figures())
    figures.update(grouped.grouped_figures(max(2, steps // 2), workers=2 if size == "smoke" else 4))
    if heads_only:
        return {**figures, **heads_ratios(figures)}
    figures["matmul_flops_per_s"] = benchmark.matmul_flops_per_second()
    figures.update(benchmark.train_step_figures(small, source, steps))
    vgg = dataclasses.replace(small, arch="vgg16_bn", batch_size=sizes["vgg_batch"])
    vgg_source = synthetic_source(vgg.batch_size * (steps // 2 + 1), 32)
    figures.update({f"vgg16_bn_32px_{key}": value for key, value in
                    benchmark.train_step_figures(vgg, vgg_source, steps // 2).items()})
    figures.update(benchmark.extraction_figures(train.build_model(small).backbone, source, 32, 256))
    figures.update(benchmark.clustering_figures(sizes["points"], 256, sizes["clusters"], 4, 64, 10))
    figures.update(benchmark.cycle_figures(small, source))
    figures.update(benchmark.precision_figures(dataclasses.replace(vgg, image_size=64), steps // 2))
    figures.update(ratios(figures))
    return figures


def heads_ratios(figures: dict[str, float]) -> dict[str, float]:
    return {
        "heads_step_ratio": figures["heads16_images_per_s"] / figures["heads1_images_per_s"],
        "step_vs_plain_keras_large_heads": figures["large_heads_images_per_s"] / figures["plain_1000_images_per_s"],
        "large_heads_update_vs_plain_step": figures["large_heads_update_s"] / figures["plain_1000_step_s"],
        "pca_vs_faiss_small_n": figures["pca_small_n_s"] / figures["faiss_pca_small_n_s"],
        "grouped_allreduce_bytes_per_step": figures["grouped_allreduce_bytes_per_step"],
        "grouped_allreduce_bytes_vs_replicated": (figures["grouped_allreduce_bytes_per_step"]
                                                  / figures["replicated_allreduce_bytes_per_step"]),
        "grouped_allreduce_vs_body_and_super_head": (figures["grouped_allreduce_bytes_per_step"]
                                                     / figures["body_and_super_head_gradient_bytes"]),
        "grouped_step_vs_replicated": figures["grouped_images_per_s"] / figures["replicated_images_per_s"],
    }


def ratios(figures: dict[str, float]) -> dict[str, float]:
    return {
        **heads_ratios(figures),
        "input_pipeline_ratio": figures["dc_images_per_s"] / figures["dc_cached_images_per_s"],
        "step_vs_plain_keras": figures["dc_images_per_s"] / figures["plain_keras_images_per_s"],
        "matmul_utilization": figures["achieved_flops_per_s"] / figures["matmul_flops_per_s"],
        "vgg16_bn_32px_matmul_utilization": (figures["vgg16_bn_32px_achieved_flops_per_s"]
                                             / figures["matmul_flops_per_s"]),
        "extraction_vs_predict": figures["extraction_images_per_s"] / figures["predict_images_per_s"],
        "clustering_vs_faiss": figures["clustering_s"] / figures["bare_faiss_s"],
        "recluster_vs_epoch": figures["recluster_s"] / figures["epoch_s"],
        "bf16_speedup": figures["bf16_images_per_s"] / figures["float32_images_per_s"],
    }


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    figures = run("quick" if FLAGS.quick else FLAGS.size, FLAGS.deterministic, FLAGS.jit_compile, FLAGS.heads_only)
    for key, value in sorted(figures.items()):
        print(f"{key:45s} {value:.4g}")
    if FLAGS.output:
        from keras_dc import workdir

        workdir.write_json(FLAGS.output, figures)


def entry_point() -> None:
    """The program, run as `python tools/benchmark.py` or as the console script `keras-dc-benchmark`."""
    define_flags()
    cli.run(main, __name__)


if __name__ == "__main__":
    entry_point()
