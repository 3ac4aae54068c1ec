# Two entry points: `make demo` (train, evaluate on the built-in data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): setup.py pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools  # setup.py build_ext needs setuptools (venvs of Python 3.12+ lack it)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[train,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cfrg demo --out runs/demo

test: $(STAMP)
	$(PY) setup.py -q build_ext --inplace
	$(PY) -m pytest -q tests

clean:
	rm -rf build *.egg-info sdk/_native*.so
