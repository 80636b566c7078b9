# `make demo` and `make test` set themselves up: a .venv with the package installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint gallery bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch with the torchvision built for it, pinned as a pair (the test extra needs torchvision, which
	# fails to import beside any other torch build: 'operator torchvision::nms does not exist')
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e ".[test,lint]"
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p landscape-out
	$(BIN)/landscape sweep --sample mlp --x -1:1:51 --y -1:1:51 --force -o landscape-out/mlp-surface.h5
	$(BIN)/landscape plot landscape-out/mlp-surface.h5 --force -o landscape-out/mlp-surface.png
	$(BIN)/landscape sweep --sample mlp --x -1:1:51 --force -o landscape-out/mlp-line.h5
	$(BIN)/landscape plot landscape-out/mlp-line.h5 --force -o landscape-out/mlp-line.png
	@echo
	@echo "Results in landscape-out/: mlp-surface.h5 mlp-surface.png mlp-line.h5 mlp-line.png"
	@echo "Inspect one with: $(BIN)/landscape info landscape-out/mlp-surface.h5"

gallery: $(STAMP)
	$(BIN)/python plots/make_gallery.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff (lint and format), mypy (strict on the numerical core), the import rules of docs/architecture.md
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

# the suite of ordinary models against a loop script, loss-landscapes and PyHessian, whole processes (about 2.5-3
# hours on 2 cores with 3 repeats; BENCH_ARGS="--repeats 1 --entries mlp,resnet18" for less)
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/suite.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/streaming.py

clean:
	rm -rf landscape-out .pytest_cache build *.egg-info
