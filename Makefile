# The newcomer path: `make demo` (install + run the study on the embedded default + report)
# and `make test` (install + run the test suite). Everything installs into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
RESULTS ?= results/demo
# the comparison the study is about: RU-Net from scratch vs the HyperSL backbone (RU-Net and per-pixel heads)
DEMO_STRATEGIES ?= indomain,crossdomain,crossdomain-fc

export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled

.PHONY: install demo test test-all lint bench clean mutation mutants

install: $(STAMP)

$(STAMP): pyproject.toml requirements-data.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first: 2.13.0 is the CPU build on disk here; a plain `torch` pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps -r requirements-data.txt
	touch $(STAMP)

demo: install
	$(PY) -m study.run --strategy $(DEMO_STRATEGIES) --dataset hyko2 --results $(RESULTS) --demo
	$(PY) -m study.report $(RESULTS) --csv

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m "not cluster and not gpu"

# Mutation testing of the scientific core (docs/testing.md; slow, not in CI). MODULES: mutmut name globs,
# e.g. make mutation MODULES="study.train.metrics*"; default: every module in [tool.mutmut] source_paths.
MODULES ?=
mutation: install
	$(VENV)/bin/mutmut run --max-children 2 $(MODULES)
	$(VENV)/bin/mutmut results

# the issue-29 mutants (paper order, early stopping, best-state restore, chunks, a recipe batch, .hsd header)
mutants: install
	$(PY) scripts/check_mutants.py

bench: install
	$(PY) -m benchmarks

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache results
