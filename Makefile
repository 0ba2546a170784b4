# Set-up and the everyday commands. `make demo`, `make test` and `make test-fast` each create the virtualenv on
# first use.
#
# Why PIP_CONFIG_FILE=/dev/null: some machines carry a pip.conf whose find-links folder holds a CPU-only
# torch wheel that shadows the registry's build and breaks torchvision ("operator torchvision::nms does
# not exist"). Ignoring pip.conf installs the matching torch/torchvision pair from the registry; the CUDA
# build runs fine on a CPU-only machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := PIP_CONFIG_FILE=/dev/null $(PY) -m pip
CIFAR10 ?= $(firstword $(wildcard ../shared/data/cifar10-jpeg.tar.gz) cifar10)
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=
# the quick tier: everything but the end-to-end runs (slow), the crash drills (reliability) and the SLURM cluster
FAST_TIER := not slow and not reliability and not slurm

.PHONY: install demo test test-fast lint clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

# The main job: a short DINO pretraining of Container-Light-tiny on CIFAR-10, then a weighted kNN evaluation.
demo: install
	$(VENV)/bin/container-ssl pretrain --config configs/pretrain/cifar10_demo.yaml data.path=$(CIFAR10) output_dir=$(DEMO_DIR)
	$(VENV)/bin/container-ssl knn --checkpoint $(DEMO_DIR)/checkpoint.pt --k 10 20

# every test (what CI runs); test-fast only the quick tier, for the edit-test loop
test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "$(FAST_TIER)" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check container_ssl tests benchmarks

clean-demo:
	rm -rf $(DEMO_DIR)
