"""Clustering at scale: seconds and peak RSS of the sharded hierarchical k-means (one process, or
several local workers) next to bare faiss.Kmeans calls doing the same two-level work.

Every case runs in a fresh process so that its peak RSS is its own; the cases of
one (N, k) run back to back on the same feature file, so their ratio is fair on
a shared machine. tools/benchmark_clustering.py drives this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from keras_dc import hierarchy, kmeans
from keras_dc.bench import local_cluster
from keras_dc.bench.benchmark import faiss_kmeans_assign
from keras_dc.distribute import Collective
from keras_dc.feature_cache import CacheWriter, FeatureCache, ShardedFeatures, shard_bounds

RESULT_PREFIX = "RESULT "
SYNTHETIC_CENTRES = 2000
MIN_POINTS_PER_CENTROID = 4  # below, some super-cluster may hold fewer than k/m points: faiss.Kmeans refuses
_GENERATE_ROWS = 65536


def write_synthetic_features(path: str, rows: int, dim: int, seed: int = 0) -> FeatureCache:
    """L2-normalised points around SYNTHETIC_CENTRES random centres, written chunk by chunk."""
    means = np.random.default_rng(seed).normal(size=(SYNTHETIC_CENTRES, dim)).astype(np.float32)
    with CacheWriter(path, rows, dim) as writer:
        for first in range(0, rows, _GENERATE_ROWS):
            rng = np.random.default_rng([seed, first])
            size = min(_GENERATE_ROWS, rows - first)
            x = means[rng.integers(0, SYNTHETIC_CENTRES, size)] + rng.normal(size=(size, dim)).astype(np.float32)
            writer.write(x / np.linalg.norm(x, axis=1, keepdims=True))
        return writer.finish()


def _status_gb(key: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), in GB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / 1e9
    raise KeyError(key)


def bare_faiss_case(path: str, k: int, m: int, niter: int, seed: int) -> dict:
    """faiss.Kmeans into m super-clusters on all rows (in RAM), then into k/m inside each, with the
    final assignments: the work of the hierarchical k-means without anything around it."""
    x = np.load(path)
    baseline = _status_gb("VmRSS")
    start = time.perf_counter()
    super_ids = faiss_kmeans_assign(x, m, niter, seed)
    for s in range(m):
        faiss_kmeans_assign(x[super_ids == s], hierarchy.sub_classes(k, m), niter, seed + 1 + s)
    return {"seconds": time.perf_counter() - start, "baseline_rss_gb": baseline, "peak_rss_gb": _status_gb("VmHWM")}


def sharded_case(path: str, k: int, m: int, niter: int, seed: int, collective: Collective) -> dict:
    """keras-dc's hierarchical k-means on this worker's shard of the memory-mapped feature file."""
    features = FeatureCache.open(path).array
    start_row, stop_row = shard_bounds(features.shape[0], collective.worker, collective.workers)
    data = ShardedFeatures(features[start_row:stop_row], start_row, features.shape[0], collective)
    baseline = _status_gb("VmRSS")
    start = time.perf_counter()
    result = kmeans.hierarchical_kmeans(data, k, m, niter, seed)
    return {"seconds": time.perf_counter() - start, "baseline_rss_gb": baseline,
            "peak_rss_gb": _status_gb("VmHWM"), "worker": collective.worker,
            "checksum": kmeans.assignments_checksum(result.super_ids, result.sub_ids)}


def print_result(result: dict) -> None:
    """One machine-readable line that the driving process collects."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def _collect(lines: list[str]) -> list[dict]:
    results = []
    for line in lines:
        text = line.split("] ", 1)[1] if line.startswith("[worker ") else line
        if text.startswith(RESULT_PREFIX):
            results.append(json.loads(text[len(RESULT_PREFIX):]))
    return results


def _run_process(command: Sequence[str], threads: int) -> list[dict]:
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads))
    completed = subprocess.run(list(command), env=environment, capture_output=True, text=True)
    if completed.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return _collect(completed.stdout.splitlines())


def _run_workers(command: Sequence[str], workers: int) -> list[dict]:
    lines: list[str] = []
    if local_cluster.run_local_cluster(command, workers, write=lines.append):
        raise RuntimeError(f"{workers} workers of {' '.join(command)} failed:\n" + "\n".join(lines[-40:]))
    return _collect(lines)


def measure(script: str, path: str, rows: int, k: int, m: int, niter: int, workers: int,
            log: Callable[[str], None] = print) -> dict:
    """Bare faiss, one process and `workers` local workers on the feature file at `path`; the
    child processes run `script --case=...` (tools/benchmark_clustering.py)."""
    cores = os.cpu_count() or 1
    case = [f"--cache={path}", f"--k={k}", f"--m={m}", f"--niter={niter}"]
    row = {"n": rows, "k": k, "m": m, "niter": niter, "cache_gb": os.path.getsize(path) / 1e9}
    for name, command in (("bare_faiss", [sys.executable, script, "--case=bare", *case]),
                          ("one_process", [sys.executable, script, "--case=sharded", *case])):
        row[name] = _run_process(command, cores)[0]
        log(f"N={rows} k={k} {name}: {row[name]['seconds']:.2f} s, peak RSS {row[name]['peak_rss_gb']:.2f} GB")
    if workers > 1:
        results = _run_workers([sys.executable, script, "--case=sharded", *case], workers)
        row["workers"] = {"count": workers, "seconds": max(r["seconds"] for r in results),
                          "peak_rss_gb": max(r["peak_rss_gb"] for r in results),
                          "baseline_rss_gb": max(r["baseline_rss_gb"] for r in results),
                          "checksums": sorted({r["checksum"] for r in results})}
        log(f"N={rows} k={k} {workers} workers: {row['workers']['seconds']:.2f} s, "
            f"peak RSS {row['workers']['peak_rss_gb']:.2f} GB per worker")
    return row


def markdown_table(rows: list[dict]) -> str:
    """The figures as docs/scaling.md shows them: seconds, ratios to bare faiss, peak RSS."""
    lines = ["| N | k | bare faiss s | 1 process s (ratio) | workers s (ratio) | peak RSS GB faiss / 1 proc / "
             "per worker | cache GB |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        bare, one = row["bare_faiss"], row["one_process"]
        multi = row.get("workers")
        multi_text = f"{multi['seconds']:.1f} ({multi['seconds'] / bare['seconds']:.2f})" if multi else "-"
        multi_rss = f"{multi['peak_rss_gb']:.2f}" if multi else "-"
        lines.append(f"| {row['n']:,} | {row['k']:,} | {bare['seconds']:.1f} | "
                     f"{one['seconds']:.1f} ({one['seconds'] / bare['seconds']:.2f}) | {multi_text} | "
                     f"{bare['peak_rss_gb']:.2f} / {one['peak_rss_gb']:.2f} / {multi_rss} | {row['cache_gb']:.2f} |")
    return "\n".join(lines)
