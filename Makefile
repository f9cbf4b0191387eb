# The README's commands. `make run` and `make test` set everything up on a fresh machine.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0

.PHONY: run test bench lint clean

$(BIN)/fedsim: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, so pip never pulls the multi-GB CUDA build on a CPU machine
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/fedsim

run: $(BIN)/fedsim
	$(BIN)/fedsim run scenarios/quickstart.toml --out runs/quickstart --overwrite
	$(BIN)/fedsim plot runs/quickstart

test: $(BIN)/fedsim
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(BIN)/fedsim
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

lint: $(BIN)/fedsim
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs build *.egg-info
