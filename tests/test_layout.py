"""The package's layout: the core never imports the benchmarks and launch aids (keras_dc.bench) or the tools."""

import json
import os
import pkgutil
import subprocess
import sys

import keras_dc
from conftest import ROOT

LOADED = """
import importlib, json, sys
for name in {names!r}:
    importlib.import_module(name)
print(json.dumps({{name: getattr(module, "__file__", None) for name, module in sys.modules.items()}}))
"""


def test_the_core_never_imports_bench_or_tools():
    core = [name for _, name, _ in pkgutil.iter_modules(keras_dc.__path__, "keras_dc.") if name != "keras_dc.bench"]
    assert "keras_dc.train" in core and "keras_dc.kmeans" in core and "keras_dc.workdir" in core
    completed = subprocess.run([sys.executable, "-c", LOADED.format(names=core)], capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    loaded = json.loads(completed.stdout.strip().splitlines()[-1])
    tools = os.path.join(ROOT, "tools") + os.sep
    forbidden = [name for name, path in loaded.items()
                 if name == "keras_dc.bench" or name.startswith("keras_dc.bench.") or (path or "").startswith(tools)]
    assert forbidden == []

