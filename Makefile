# Two commands on a fresh machine (only Python 3.9+ needed):
#   make demo   set up .venv, pre-train on scikit-learn's digits (CPU, ~8 minutes), report accuracies
#   make test   set up .venv, lint and format-check (ruff), run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
# torch is pinned so the CPU machines this project is tested on install it from their local wheels.
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
# faiss comes from an extra: cpu (faiss-cpu) or gpu (faiss-gpu-cu12), never both (one `faiss` module).
EXTRAS ?= cpu,test

# Speed benchmarks (ratios against a reference in the same process; minutes each on 2 CPU cores).
SPEED_BENCH := pretrain_throughput mix_overhead linear_eval_speed kmeans_speed ddp_overhead

.PHONY: setup demo test bench learning gpu-setup gpu-check bench-gpu clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	touch $@

demo: setup
	$(BIN)/python -m ssmix.quickstart

# Lint (ruff: E, F, W and import order; pyproject.toml), then the formatter's check, then the tests.
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=10 tests

bench: setup
	for b in $(SPEED_BENCH); do $(BIN)/python bench/$$b.py || exit 1; done

# Does pre-training learn? Every method and MoCo v2 x mixers on the digits recipe, 3 seeds, beside random
# init (hours on 2 CPU cores; finished runs are reused): writes docs/results.md.
learning: setup
	$(BIN)/python bench/learning.py

# On a CUDA machine, in a venv of its own (.venv-gpu: faiss-gpu, not the cpu extra the default venv has;
# one `faiss` module can be installed at a time):
#   gpu-check  one table in under 8 minutes, nothing downloaded (bench/gpu_check.py)
#   bench-gpu  the `cuda`-marked tests, then images/s beside the torch + lightly reference
GPU_VENV ?= .venv-gpu
GPU_BIN := $(GPU_VENV)/bin

gpu-setup:
	$(MAKE) setup VENV=$(GPU_VENV) EXTRAS=gpu,test

gpu-check: gpu-setup
	$(GPU_BIN)/python bench/gpu_check.py

bench-gpu: gpu-setup
	$(GPU_BIN)/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
	$(GPU_BIN)/python -m pytest -q -rs -m cuda tests
	$(GPU_BIN)/python bench/gpu_throughput.py

clean:
	rm -rf $(VENV) $(GPU_VENV) runs
