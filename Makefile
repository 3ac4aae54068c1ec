# Two entry points: `make demo` (train, evaluate on the built-in data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
SERVE_VENV ?= .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed

.PHONY: demo test venv serve-venv clean

$(STAMP): setup.py pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools  # setup.py build_ext needs setuptools (venvs of Python 3.12+ lack it)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[train,dev]'
	touch $(STAMP)

venv: $(STAMP)

# cfrg serve's environment (PyTriton needs numpy < 2): the same sources, editable; without pybind11 here
# (--no-build-isolation) it builds no extension and uses the one `make test` builds in place
$(SERVE_STAMP): setup.py pyproject.toml constraints-serve.txt
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q --upgrade pip setuptools
	$(SERVE_VENV)/bin/python -m pip install -q -c constraints-serve.txt --no-build-isolation -e '.[serve]'
	touch $(SERVE_STAMP)

serve-venv: $(SERVE_STAMP)

demo: $(STAMP)
	$(VENV)/bin/cfrg demo --out runs/demo

test: $(STAMP) $(SERVE_STAMP)
	$(PY) setup.py -q build_ext --inplace
	$(PY) -m pytest -q tests

clean:
	rm -rf build *.egg-info sdk/_native*.so
