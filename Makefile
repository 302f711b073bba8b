# keras-dc: `make demo` trains the demo recipe, `make test` lints (ruff) and runs the test suite.
# Both create .venv with Python 3.11, install the pinned requirements, then keras-dc itself (editable).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= /tmp/kdc_demo

.PHONY: demo test lint benchmark clean

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

clean:
	rm -rf $(VENV)
