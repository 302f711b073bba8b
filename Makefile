# keras-dc: `make demo` trains the demo recipe, `make test` runs the test suite.
# Both create .venv with Python 3.11 and install the pinned requirements first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= /tmp/kdc_demo

.PHONY: demo test benchmark clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) tools/train.py --flagfile=flags/demo.flags --workdir=$(WORKDIR)

test: $(VENV)/.installed
	$(PY) -m pytest tests -q

clean:
	rm -rf $(VENV)
