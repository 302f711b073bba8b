"""The wheel, installed with its declared dependencies only into a fresh venv: every console script does its
real job on tiny input, so an import that pyproject.toml does not declare fails here.

The fresh venv holds exactly the distributions the wheel requires (with its `reference` extra), transitively,
at the versions of this environment, linked file by file rather than downloaded again: offline, in seconds,
and with nothing else importable (no --system-site-packages, no PYTHONPATH, no requirements.txt).
"""

import ast
import glob
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement

from conftest import ROOT

EXTRAS = ("reference",)  # torch, for keras-dc-import-reference-weights
SOURCES = ("keras_dc", "tools")
BENCHMARK_FIGURES = ("input_pipeline_ratio", "extraction_vs_predict", "clustering_vs_faiss", "step_vs_plain_keras",
                     "bf16_speedup", "matmul_utilization", "recluster_vs_epoch", "dc_images_per_s",
                     "dc_cached_images_per_s", "plain_keras_images_per_s", "extraction_images_per_s",
                     "predict_images_per_s", "clustering_s", "bare_faiss_s", "recluster_s", "epoch_s",
                     "float32_images_per_s", "bf16_images_per_s", "train_flops_per_image", "matmul_flops_per_s",
                     "heads_step_ratio", "step_vs_plain_keras_large_heads", "large_heads_update_vs_plain_step",
                     "pca_vs_faiss_small_n", "grouped_allreduce_bytes_per_step",
                     "grouped_allreduce_bytes_vs_replicated", "grouped_allreduce_vs_body_and_super_head",
                     "grouped_step_vs_replicated")
TINY_TRAINING = ["--arch=small", "--image_size=16", "--batch_size=16", "--epochs=1", "--k=4", "--super_clusters=2",
                 "--pca_dim=8", "--kmeans_iters=3", "--min_crop_scale=0.5"]


def _pyproject() -> dict:
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        return tomllib.load(handle)


def test_every_third_party_import_is_a_declared_dependency():
    """Each module keras_dc or a tool imports (lazily too) comes from a distribution pyproject.toml names."""
    project = _pyproject()["project"]
    declared = {Requirement(text).name.lower() for text in project["dependencies"]}
    declared |= {Requirement(text).name.lower() for extra in EXTRAS for text in project["optional-dependencies"][extra]}
    imported = set()
    for folder in SOURCES:
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    imported.add(node.module.split(".")[0])
    third_party = {name for name in imported if name not in sys.stdlib_module_names} - {"keras_dc", "keras_dc_tools"}
    providers = importlib.metadata.packages_distributions()
    undeclared = {name: providers.get(name) for name in third_party
                  if not {dist.lower() for dist in providers.get(name, [])} & declared}
    assert "matplotlib" in third_party and undeclared == {}


def _build_wheel(folder) -> str:
    """The wheel of a copy of this checkout (a build writes build/ and *.egg-info beside the sources)."""
    source = os.path.join(folder, "source")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                                 ".pytest_cache", "runs"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", os.path.join(folder, "dist"), source], check=True, capture_output=True, timeout=300)
    (wheel,) = glob.glob(os.path.join(folder, "dist", "keras_dc-*.whl"))
    return wheel


def _requirements_of_wheel(wheel) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        lines = archive.read(metadata).decode().splitlines()
    return [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]


def _closure(requirements, extras) -> dict[str, importlib.metadata.Distribution]:
    """Every distribution of this environment that `requirements` need, transitively (markers evaluated)."""
    needed, pending = {}, [(requirement, extra) for requirement in requirements for extra in ("", *extras)]
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = requirement.name.lower().replace("_", "-")
        if name in needed:
            continue
        needed[name] = importlib.metadata.distribution(name)
        pending += [(Requirement(text), wanted) for text in needed[name].requires or []
                    for wanted in ("", *requirement.extras)]
    return needed


def _fresh_venv(folder, distributions) -> str:
    """A venv without pip whose site-packages holds links to the files of `distributions` only."""
    venv = os.path.join(folder, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=300)
    (site,) = glob.glob(os.path.join(venv, "lib", "python*", "site-packages"))
    for distribution in distributions.values():
        for file in distribution.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts:  # scripts in bin/, compiled caches
                continue
            target = os.path.join(site, *file.parts)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.lexists(target):
                os.symlink(os.path.abspath(distribution.locate_file(file)), target)
    return venv


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, environment) with the wheel installed by pip into a fresh venv with its declared dependencies."""
    folder = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(folder)
    venv = _fresh_venv(folder, _closure(_requirements_of_wheel(wheel), EXTRAS))
    python = os.path.join(venv, "bin", "python")
    pip = [sys.executable, "-m", "pip", "--python", python]
    # Without PYTHONPATH (the tests put this checkout on it): an installed checkout's keras_dc.egg-info
    # there would make pip take the wheel as installed already.
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run([*pip, "install", "--quiet", "--no-index", "--no-deps", wheel], check=True, timeout=300,
                   env=environment)
    check = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=300, env=environment)
    assert check.returncode == 0, check.stdout  # every declared requirement is there
    where = subprocess.run([python, "-c", "import keras_dc, keras_dc_tools; print(keras_dc.__file__)"], cwd=folder,
                           env=environment, capture_output=True, text=True, timeout=300)
    assert where.stdout.startswith(venv), where.stdout + where.stderr  # not this checkout
    return venv, environment, folder


def _script(installed, name, *arguments):
    venv, environment, folder = installed
    completed = subprocess.run([os.path.join(venv, "bin", name), *arguments], cwd=folder, env=environment,
                               capture_output=True, text=True, timeout=1800)  # a hang guard for a loaded machine
    assert completed.returncode == 0, f"{name}:\n{completed.stdout[-2000:]}\n{completed.stderr[-3000:]}"
    return completed.stdout


def test_every_console_script_is_installed(installed):
    venv = installed[0]
    assert all(os.access(os.path.join(venv, "bin", name), os.X_OK) for name in _pyproject()["project"]["scripts"])


def test_the_installed_scripts_train_evaluate_and_draw(installed):
    """Shapes folder -> training -> probe, fine-tuning, cluster grids, probe plot; and the launcher."""
    folder = installed[2]
    shapes, run = str(folder / "shapes"), str(folder / "run")
    _script(installed, "keras-dc-make-shapes", f"--output={shapes}", "--images=64", "--size=16")
    _script(installed, "keras-dc-train", f"--data={shapes}", *TINY_TRAINING, f"--workdir={run}")
    _script(installed, "keras-dc-probe", f"--workdir={run}", "--lrs=0.1", "--epochs=2", "--kmeans_pca_dim=8",
            f"--output={folder / 'probe.json'}")
    assert set(json.loads((folder / "probe.json").read_text())["layers"])
    _script(installed, "keras-dc-finetune", f"--workdir={run}", "--epochs=1", "--batch_size=8",
            f"--output={folder / 'finetune.json'}")
    assert 0 <= json.loads((folder / "finetune.json").read_text())["top1"] <= 1
    _script(installed, "keras-dc-visualize", f"--workdir={run}", "--clusters=2", "--samples=2",
            "--projector_samples=0", f"--output_dir={folder / 'grids'}")
    assert glob.glob(str(folder / "grids" / "*.png"))
    _script(installed, "keras-dc-plot-probes", f"--probes={folder / 'probe.json'}", f"--output={folder / 'probe.png'}")
    assert (folder / "probe.png").stat().st_size > 0
    worker = folder / "worker.py"  # training on several workers is tests/test_multi_worker.py's
    worker.write_text("import json, os\nprint('task', json.loads(os.environ['TF_CONFIG'])['task']['index'])\n")
    output = _script(installed, "keras-dc-launch-local", "--workers=2", f"--program={worker}")
    assert "[worker 0] task 0" in output and "[worker 1] task 1" in output


def test_the_installed_benchmark_smoke_run_writes_every_field(installed):
    """The benchmark's test (its figures are never asserted), run by the installed console script."""
    output = installed[2] / "bench.json"
    _script(installed, "keras-dc-benchmark", "--size=smoke", f"--output={output}")
    figures = json.loads(output.read_text())
    assert [key for key in BENCHMARK_FIGURES if key not in figures] == []
    assert all(isinstance(value, float) and value > 0 for value in figures.values())


def test_the_installed_clustering_benchmark_and_import_run(installed):
    from test_reference_weights import _random_reference, _save_like_the_reference

    folder = installed[2]
    _script(installed, "keras-dc-benchmark-clustering", "--sizes=2000", "--ks=40", "--dim=16", "--niter=2",
            "--workers=1", f"--workdir={folder / 'scaling'}", f"--output={folder / 'scaling.json'}")
    assert json.loads((folder / "scaling.json").read_text())
    _save_like_the_reference(_random_reference(sobel=False, seed=0), folder / "reference.pth")
    _script(installed, "keras-dc-import-reference-weights", f"--checkpoint={folder / 'reference.pth'}",
            f"--output_dir={folder / 'imported'}")
    assert (folder / "imported" / "backbone.keras").exists()
