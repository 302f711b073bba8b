# keras-dc: `make demo` trains the demo recipe, `make test` lints (ruff) and runs the test suite,
# `make test-quick` lints and runs the fast tests only (README: how long), `make figures`
# remakes every picture and figure table of README and docs from a fresh demo run (in FIGURES_WORKDIR).
# Both create .venv with Python 3.11, install the pinned requirements, then keras-dc itself (editable).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= /tmp/kdc_demo
# The fast tests: no training run, no tool started as a process, beyond a few seconds each.
QUICK_TESTS := cli data evaluation feature_cache heads hierarchy kmeans layers packaging pca sampling

.PHONY: demo test test-quick figures lint benchmark clean

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

demo: $(VENV)/.installed
	$(PY) tools/train.py --flagfile=flags/demo.flags --workdir=$(WORKDIR)

lint: $(VENV)/.installed
	$(PY) -m ruff check keras_dc tools tests

# The suite runs on PYTEST_WORKERS processes (pytest-xdist), a test file per process so that its
# module fixtures (a trained run, an installed wheel) are made once. Many tests wait on a tool they
# started, so one process leaves a core idle (23 min 44 s on one process, 20 min 22 s on two).
PYTEST_WORKERS ?= 2
test: lint
	$(PY) -m pytest tests -q --durations=15 -n $(PYTEST_WORKERS) --dist=loadfile

# Each picture and table in README/docs comes with the JSON it shows, in docs/figures; tests/test_figures.py
# checks that README's tables say what those JSONs do. A finished demo run in FIGURES_WORKDIR is reused
# (training resumes after its last epoch: nothing to do); remove the folder to train again.
FIGURES := docs/figures
FIGURES_WORKDIR ?= /tmp/kdc_figures
RANDOM_INIT := --random_init --arch=small --image_size=32 --sobel --train_data=digits
# The grid of probe learning rates the digits figures were measured with; the tool's default is lower
# (0.1 to 0.0001: on photos every layer chose the old grid's smallest, docs/evaluation.md).
DIGITS_LRS := --lrs=1,0.1,0.01
figures: $(VENV)/.installed
	mkdir -p $(FIGURES)
	$(PY) tools/train.py --flagfile=flags/demo.flags --workdir=$(FIGURES_WORKDIR)
	cp $(FIGURES_WORKDIR)/metrics.jsonl $(FIGURES)/demo_metrics.jsonl
	$(PY) tools/linear_probe.py --workdir=$(FIGURES_WORKDIR) $(DIGITS_LRS) --output=$(FIGURES)/demo_probe.json
	$(PY) tools/linear_probe.py $(RANDOM_INIT) $(DIGITS_LRS) --output=$(FIGURES)/random_probe.json
	$(PY) tools/plot_probes.py --probes=$(FIGURES)/demo_probe.json,$(FIGURES)/random_probe.json \
		--labels="DeeperCluster (make demo),same net at random init" \
		--title="Linear probes on digits (held-out 20%), demo network" --output=$(FIGURES)/demo_probes.png
	$(PY) tools/visualize_clusters.py --workdir=$(FIGURES_WORKDIR) --select=largest --projector_samples=0 \
		--output_dir=$(FIGURES)
	$(PY) tools/finetune.py --workdir=$(FIGURES_WORKDIR) --freeze=all --output=$(FIGURES)/finetune_frozen.json
	$(PY) tools/finetune.py --workdir=$(FIGURES_WORKDIR) --freeze=none --output=$(FIGURES)/finetune_full.json
	$(PY) tools/finetune.py $(RANDOM_INIT) --freeze=none --output=$(FIGURES)/finetune_random.json

test-quick: lint
	$(PY) -m pytest $(QUICK_TESTS:%=tests/test_%.py) -q

clean:
	rm -rf $(VENV)
