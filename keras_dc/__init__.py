"""keras-dc: DeeperCluster (Caron et al., ICCV 2019) in Keras 3 / TensorFlow."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# 3: no C++ log below FATAL. Errors worth seeing reach Python as exceptions; what TF logs at ERROR
# level on a CPU run is noise (cuInit failing without a GPU, tf.data's unknown `use_unbounded_threadpool`
# attribute). TF_CPP_MIN_LOG_LEVEL=0 in the environment shows everything again.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# numpy's OpenBLAS threads spin ~2^28 cycles (~0.1 s) after each call; the first faiss search
# after the PCA then waits for a core (one search: 5 ms -> 110 ms). 2^20 cycles (~0.4 ms)
# keeps back-to-back BLAS calls warm. Read when numpy loads, so it acts when keras_dc comes first.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

from keras_dc import startup  # noqa: E402  (after the environment, before anything imports TensorFlow)

startup.install()

__version__ = "0.1.0"
