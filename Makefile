# Two commands on a fresh machine (only Python 3.9+ needed):
#   make demo   set up .venv, pre-train on scikit-learn's digits (CPU, a few minutes), report accuracies
#   make test   set up .venv, run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
# torch is pinned so the CPU machines this project is tested on install it from their local wheels.
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[cpu,test]'
	touch $@

demo: setup
	$(BIN)/python -m ssmix.quickstart

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
