# keyed_dispatch: every target builds .venv first if it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: venv test demo lint docs bench bench-quick clean

STAMP  := $(VENV)/.installed

# The stamp is written only after a successful install, so an interrupted
# install is retried; it is redone when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The docs extra on top of the dev install; redone when pyproject.toml changes.
DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q --cov=keyed_dispatch --cov-report=term --cov-fail-under=95

demo: $(STAMP)
	$(BIN)/python -m keyed_dispatch demo

lint: $(STAMP)
	$(BIN)/ruff check keyed_dispatch tests examples benchmarks
	$(BIN)/ruff format --check keyed_dispatch tests examples benchmarks
	$(BIN)/mypy

# Strict: any warning (a broken reference, bad docstring markup) fails the
# build. -E rereads every page, so a warning is not hidden by a cached page.
docs: $(DOCS_STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -b html docs docs/_build/html

# The suite lives in the checkout (benchmarks/), not in the package.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.suite

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.suite --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage docs/_build
