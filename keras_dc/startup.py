"""Keeps TensorFlow's C++ start-up log off stderr when TensorFlow is first imported.

TensorFlow's shared libraries log a few INFO lines (oneDNN, CUDA drivers not found) through
absl before absl's logging is initialised, so TF_CPP_MIN_LOG_LEVEL cannot silence them. A
meta-path hook runs the first `import tensorflow` with the stderr file descriptor sent to a
temporary file, then writes back every line that is not such an INFO line: warnings and
errors still show. TensorFlow is not imported any earlier than the program imports it.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# absl's "logging before InitializeLog" notice and its INFO lines ("I0000 00:00:1796285265.95  11333 port.cc:153] ...").
NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                   r"|I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] .*)$")


@contextlib.contextmanager
def stderr_without_noise() -> Iterator[None]:
    """Runs the block with file descriptor 2 captured, then writes back its lines except NOISE."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not NOISE.match(line.rstrip("\n"))]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


class QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as usual, but loads it under stderr_without_noise; removes itself once used."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def exec_module(module):
                with stderr_without_noise():
                    load(module)

            spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Quiets the first import of TensorFlow, unless it is already imported."""
    if "tensorflow" not in sys.modules and not any(isinstance(f, QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, QuietTensorFlowImport())
