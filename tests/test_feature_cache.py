"""The disk-backed feature cache: file round trip, shards, the size guard and extraction into it."""

import numpy as np
import pytest
import tensorflow as tf

import keras_dc  # noqa: F401
import keras

from keras_dc import train
from keras_dc.config import ConfigError
from keras_dc.distribute import Collective
from keras_dc.feature_cache import (CacheBudgetError, CacheSettings, CacheWriter, FeatureCache, ShardedFeatures,
                                    cache_gb, check_cache_budget, extract_to_cache, shard_bounds)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cache_file_round_trip_is_memory_mapped(tmp_path, dtype):
    path = str(tmp_path / "sub" / "features.npy")
    values = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    with CacheWriter(path, 7, 5, dtype) as writer:
        writer.write(values[:3])
        writer.write(values[3:])
        written = writer.finish()
    np.testing.assert_array_equal(written.array, values.astype(dtype))
    reopened = FeatureCache.open(path)
    assert isinstance(reopened.array, np.memmap) and reopened.array.dtype == np.dtype(dtype)
    np.testing.assert_allclose(reopened.array, values, rtol=1e-3 if dtype == "float16" else 0)
    reopened.remove()
    assert not (tmp_path / "sub" / "features.npy").exists()


def test_unknown_cache_dtype_is_refused(tmp_path):
    with pytest.raises(ValueError, match="float16"):
        CacheWriter(str(tmp_path / "x.npy"), 2, 2, "int8")


def test_a_cache_missing_or_overflowing_rows_is_refused_and_removed(tmp_path):
    path = tmp_path / "x.npy"
    with pytest.raises(ValueError, match="1 of 2 rows written"):
        with CacheWriter(str(path), 2, 3) as writer:
            writer.write(np.zeros((1, 3)))
            writer.finish()
    assert not path.exists()
    with pytest.raises(ValueError, match="do not fit"):
        with CacheWriter(str(path), 2, 3) as writer:
            writer.write(np.zeros((3, 3)))
    assert not path.exists()


@pytest.mark.parametrize("rows,workers", [(10, 3), (2, 2), (1797, 2), (5, 1)])
def test_shards_cover_every_row_once_with_sizes_within_one(rows, workers):
    bounds = [shard_bounds(rows, worker, workers) for worker in range(workers)]
    assert bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(workers - 1))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_size_guard_names_the_sizes_and_training_names_the_flag():
    assert cache_gb(1_000_000, (4096, 256), "float16") == pytest.approx(8.704)
    check_cache_budget(1000, (64,), CacheSettings("/unused", max_gb=0.0))
    check_cache_budget(1000, (64,), CacheSettings("/unused", max_gb=0.001))
    with pytest.raises(CacheBudgetError, match="1.06 GB.*1000000 rows x \\(256 \\+ 8\\)") as error:
        check_cache_budget(1_000_000, (256, 8), CacheSettings("/unused", max_gb=0.1))
    with pytest.raises(ConfigError, match="--max_cache_gb: .*1.06 GB"):  # what training reports
        with train.setting_errors():
            raise error.value


def test_extraction_writes_the_model_outputs_in_dataset_order(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, kernel_initializer="glorot_uniform")])
    inputs = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    images = tf.data.Dataset.from_tensor_slices(inputs).batch(4)
    cache = extract_to_cache(model, images, str(tmp_path / "raw.npy"), rows=10, dtype="float32")
    np.testing.assert_allclose(cache.array, model.predict(inputs, verbose=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expected 12 feature rows"):
        extract_to_cache(model, images, str(tmp_path / "short.npy"), rows=12)


def test_a_single_shard_reads_in_float32_chunks_and_gathers_locally():
    rows = np.arange(30, dtype=np.float16).reshape(10, 3)
    data = ShardedFeatures(rows, 0, 10, Collective(), chunk_rows=4)
    chunks = list(data.chunks())
    assert [first for first, _ in chunks] == [0, 4, 8] and all(chunk.dtype == np.float32 for _, chunk in chunks)
    np.testing.assert_array_equal(data[np.array([9, 2])], rows[[9, 2]].astype(np.float32))
    np.testing.assert_array_equal(data.gather(np.arange(10)), np.arange(10))
