# keras-dc: `make demo` trains the demo recipe, `make test` lints (ruff) and runs the test suite,
# `make test-quick` lints and runs the fast tests only (under 3 minutes on 2 CPU cores).
# Both create .venv with Python 3.11, install the pinned requirements, then keras-dc itself (editable).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= /tmp/kdc_demo
# The fast tests: no training run, no tool started as a process, beyond a few seconds each.
QUICK_TESTS := cli data evaluation feature_cache heads hierarchy kmeans layers packaging pca sampling

.PHONY: demo test test-quick lint benchmark clean

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

test: lint
	$(PY) -m pytest tests -q

test-quick: lint
	$(PY) -m pytest $(QUICK_TESTS:%=tests/test_%.py) -q

clean:
	rm -rf $(VENV)
