# moe_study: `make study` runs the default study, `make test` is what CI runs (.ci/run), `make lab` opens the notebooks.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pip's warnings about absent local mirrors are noise on machines without them
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install study test lab gpu-check clean

install: $(VENV)/.installed

# torch is pinned and installed first: an unpinned torch pulls gigabytes of CUDA wheels.
$(VENV)/.installed: settings.ini setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q -e ".[dev,hf,cluster,eval]" 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c "import torch, moe_study; print('installed moe_study', moe_study.__version__, 'with torch', torch.__version__)"
	touch $@

# the cpu study (3 variants x 9 seeds at their tuned learning rates, embedded corpus) and its report: report/cpu/index.html
study: install
	$(BIN)/python -m moe_study study --preset cpu

# the notebooks' tests, then pytest on every core (pytest-xdist; tests sharing a trained fixture stay on one worker)
test: install
	$(BIN)/nbdev_test --n_workers 2
	$(BIN)/pytest -q -n auto --dist loadgroup tests

# every GPU question in one run (chapter 15): make gpu-check [ARGS="--dry-run --out DIR"]. On a GPU machine the venv's
# pinned CPU torch cannot see the GPU, so there it runs on the machine's own python3 and its CUDA torch (the package's
# other needs, numpy, pandas, sentencepiece and the like, come with such images), with this checkout on PYTHONPATH
gpu-check:
	@if command -v nvidia-smi >/dev/null && python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; \
	then PYTHONPATH=$(CURDIR) python3 -m moe_study gpu-check $(ARGS); \
	else $(MAKE) -s install && $(BIN)/python -m moe_study gpu-check $(ARGS); fi

lab: install
	$(BIN)/jupyter lab --notebook-dir nbs $$([ "$$(id -u)" = 0 ] && echo --allow-root)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
