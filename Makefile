# Two entry points: `make demo` and `make test`. Both set everything up first and are
# idempotent: stamps in the virtualenv record what was installed, so a second run reuses it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
TORCH_PIN := torch==2.13.0
TORCHATTACKS_PIN := torchattacks==3.5.1

.PHONY: demo test setup setup-test data bench gpu-carry clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

# torch first and pinned: any later dependency then sees it satisfied and pulls no CUDA build.
$(VENV)/.stamp-base: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e .
	@touch $@

# torchattacks declares torchvision but never imports it; --no-deps keeps torchvision out.
$(VENV)/.stamp-test: $(VENV)/.stamp-base
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps $(TORCHATTACKS_PIN)
	@touch $@

setup: $(VENV)/.stamp-base
setup-test: $(VENV)/.stamp-test

# Fashion-MNIST from Debian when it is missing and we can install it; otherwise the demo
# itself says what it needs and where to put the files.
data:
	@if [ -f "$(FMNIST_DIR)/train-images-idx3-ubyte.gz" ] || [ -f "$(FMNIST_DIR)/train-images-idx3-ubyte" ]; then \
	  echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Fashion-MNIST from Debian (dataset-fashion-mnist)"; \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) || \
	  echo "Could not install dataset-fashion-mnist; see the message below."; \
	else \
	  echo "Fashion-MNIST is not in $(FMNIST_DIR) and this is not a root Debian machine: see the message below."; \
	fi

demo: setup data
	$(BIN)/advrepair demo

test: setup-test data
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

bench: setup-test
	$(BIN)/python bench/reverse_attack_throughput.py

# What a lent GPU's one call carries (.gpu/, git-ignored): the wheels its image lacks (python3
# 3.12 with a CUDA torch) and the Fashion-MNIST test files. Then, with the device tool:
# run carry [".gpu"], command "bash bench/gpu_session.sh" (its header says more).
GPU_WHEELS := kornia==0.9.0 kornia_rs==0.2.0 $(TORCHATTACKS_PIN)
gpu-carry: data
	mkdir -p .gpu/wheels .gpu/fashion-mnist
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .gpu/wheels $(GPU_WHEELS)
	cp $(FMNIST_DIR)/t10k-* .gpu/fashion-mnist/

clean:
	rm -rf $(VENV) reports runs
