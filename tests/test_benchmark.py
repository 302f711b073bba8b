"""The benchmark runs end to end and its JSON has every figure (timings are never asserted)."""

import json
import subprocess
import sys

from conftest import ROOT

REQUIRED = ("input_pipeline_ratio", "extraction_vs_predict", "clustering_vs_faiss", "step_vs_plain_keras",
            "bf16_speedup", "matmul_utilization", "recluster_vs_epoch", "dc_images_per_s",
            "dc_cached_images_per_s", "plain_keras_images_per_s", "extraction_images_per_s",
            "predict_images_per_s", "clustering_s", "bare_faiss_s", "recluster_s", "epoch_s",
            "float32_images_per_s", "bf16_images_per_s", "train_flops_per_image", "matmul_flops_per_s",
            "heads_step_ratio", "step_vs_plain_keras_large_heads", "large_heads_update_vs_plain_step",
            "pca_vs_faiss_small_n", "grouped_allreduce_bytes_per_step", "grouped_allreduce_bytes_vs_replicated",
            "grouped_allreduce_vs_body_and_super_head", "grouped_step_vs_replicated")


def test_benchmark_smoke_run_writes_every_field(tmp_path):
    output = tmp_path / "bench.json"
    completed = subprocess.run([sys.executable, f"{ROOT}/tools/benchmark.py", "--size=smoke",
                                f"--output={output}"], capture_output=True, text=True, timeout=1200)
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = json.loads(output.read_text())
    missing = [key for key in REQUIRED if key not in figures]
    assert not missing
    assert all(isinstance(value, float) and value > 0 for value in figures.values())


def test_forward_flops_of_a_known_network():
    import keras_dc  # noqa: F401
    import keras

    from keras_dc.bench.benchmark import forward_flops

    image = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(image)
    x = keras.layers.Flatten()(x)
    model = keras.Model(image, keras.layers.Dense(5)(x))
    assert forward_flops(model) == 2 * 8 * 8 * 4 * 3 * 3 * 3 + 2 * (8 * 8 * 4) * 5
