# The two commands of the README (both create .venv on first use, with nothing but
# python3 on the machine, and install the package with its train, dev, ray and serve extras):
#   make demo        train -> export -> verify -> recommend on the bundled MovieLens sample
#   make test        the whole test suite (what CI runs)
# For development:
#   make test-fast   the suite without the tests marked slow, embedding or ray (the daily loop)
#   make lint        ruff on everything, mypy on the torch-free layer (_layers.TORCH_FREE)
#   make bench       the ranking benchmark (benchmarks/ranking_bench.py)
#   make clean       remove .venv, runs/ and build outputs
#   make help        this list
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed


.PHONY: help demo test test-fast lint bench clean

help:
	@sed -n '1,/^PYTHON/{/^#/s/^# \{0,1\}//p}' Makefile

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[train,dev,ray,serve]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m recsys_export.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not embedding and not ray"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $$($(BIN)/python -m recsys_export._layers)

bench: $(STAMP)
	$(BIN)/python benchmarks/ranking_bench.py

clean:
	rm -rf $(VENV) runs build *.egg-info
