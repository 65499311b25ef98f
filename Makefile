# The two commands of the README:
#   make demo   train -> export -> verify -> recommend on the bundled MovieLens sample
#   make test   the test suite
# Both create .venv on first use with nothing but python3 on the machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[train,dev,ray]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m recsys_export.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/ranking_bench.py

clean:
	rm -rf $(VENV) runs build *.egg-info
