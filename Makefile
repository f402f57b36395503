# rnnstream: every target sets up .venv itself, so `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-slow test-all bench docs check-wheel clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Everything: every extra but gpu, plus the test/bench/docs tools. `pip install rnnstream` alone is the
# runtime (numpy, onnxruntime, soundfile, scipy); see README.md for the extras.
# Re-installs only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/rnnstream demo $(DEMO_ARGS)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q -m '' $(PYTEST_ARGS)

bench: install
	$(PY) -m bench $(BENCH_ARGS)

# API reference from the docstrings (pdoc) into docs/api/ (not committed). The runtime modules import
# neither torch nor Beam; the training/export/Beam/serving ones need the full install (`make install`).
# `make docs DOCS_MODULES=rnnstream.pipeline` documents the runtime alone. Private modules (_name) are left out.
DOCS_MODULES ?= rnnstream rnnstream.pipeline rnnstream.models rnnstream.export rnnstream.beam_jobs rnnstream.serving
docs: install
	rm -rf docs/api
	$(PY) -m pdoc --docformat restructuredtext -o docs/api $(DOCS_MODULES) '!rnnstream(\..*)?\._.*'
	@echo "API reference: docs/api/index.html"

# The runtime-only wheel: build it, install it without extras into a fresh venv (no torch), check its
# predictions and `rnnstream stream` against the full install (.ci/check_wheel).
check-wheel: install
	.ci/check_wheel

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache docs/api
