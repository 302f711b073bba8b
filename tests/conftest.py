"""Shared test setup: the TensorFlow backend, quiet logs, and a tiny training config."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tools and drivers the tests start as processes import keras_dc from this checkout, installed or not.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))


@pytest.fixture
def tiny_config(tmp_path):
    """A run that trains in seconds: synthetic 16x16 images, the small net, 2 epochs."""
    from keras_dc.config import Config

    return Config(workdir=str(tmp_path / "run"), data="synthetic", synthetic_size=96, arch="small",
                  image_size=16, batch_size=16, epochs=2, k=8, super_clusters=2, rotation=True,
                  reassign_every=1, pca_dim=16, kmeans_iters=5, min_crop_scale=0.5, verbose=0)
