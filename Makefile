# Two entry points: `make demo` and `make test`. Both set everything up first and are
# idempotent: stamps in the virtualenv record what was installed, so a second run reuses it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
TORCH_PIN := torch==2.13.0
TORCHATTACKS_PIN := torchattacks==3.5.1

.PHONY: demo test setup setup-test data bench clean

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

clean:
	rm -rf $(VENV) reports runs
