# The front door. Every target that needs Python builds .venv first (a fresh clone needs no other step).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SFT    := $(PY) -m sft.cli
# Without a GPU, the CPU build of torch is installed first (the open range in pyproject.toml would pull CUDA), then
# the matching torchvision from the index without its dependencies (sft/torchvision_compat.py says why that works).
TORCH_CPU ?= torch==2.13.0
TORCHVISION_CPU ?= torchvision==0.28.0
RECIPE ?= recipes/smoke.yaml
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help venv smoke train plan bench check-data preview report test lint clean export-adapter merge predict

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if ! command -v nvidia-smi >/dev/null 2>&1; then echo "no GPU: installing $(TORCH_CPU) (CPU)"; \
		$(PY) -m pip install -q "$(TORCH_CPU)" && $(PY) -m pip install -q --no-deps "$(TORCHVISION_CPU)"; fi
	$(PY) -m pip install -q -e ".[dev,deepspeed]"
	$(PY) -c 'from sft.torchvision_compat import install_for_interpreter as i; print("wrote", i())'  # see that module
	@# DeepSpeed compiles its CPU shared-memory op (deepspeed_shm_comm, ~1 min) the first time a multi-process run
	@# starts, once per venv path; built here, the first DeepSpeed run (and its test) does not wait for the compiler.
	@$(PY) -c 'from deepspeed.accelerator import get_accelerator as g; b = g().create_op_builder("ShareMemCommBuilder"); b and b.load()' >/dev/null 2>&1 \
		&& echo "DeepSpeed's shared-memory op: ready" || echo "DeepSpeed's shared-memory op not built here (no compiler?): runs build it on first use"
	touch $@

venv: $(VENV)/.installed  ## build the virtual environment

smoke: $(VENV)/.installed  ## whole pipeline on a tiny 8-bit Mllama: train, eval, thresholds (minutes, any machine)
	$(PY) scripts/smoke.py

train: $(VENV)/.installed  ## train: RECIPE= ARGS="--learning_rate 1e-4" [ACCELERATE_CONFIG=accelerate_configs/x.yaml] [DRY_RUN=1]
	$(SFT) train $(RECIPE) $(if $(ACCELERATE_CONFIG),--accelerate-config $(ACCELERATE_CONFIG)) $(if $(NUM_PROCESSES),--num-processes $(NUM_PROCESSES)) $(if $(DRY_RUN),--dry-run) $(ARGS)

plan: $(VENV)/.installed  ## parameters and per-GPU memory estimate of RECIPE, no weights loaded (JSON=1)
	$(SFT) plan $(RECIPE) $(if $(JSON),--json) $(ARGS)

check-data: $(VENV)/.installed  ## validate every data row of RECIPE (file:line for each problem)
	$(SFT) check $(RECIPE) $(ARGS)

preview: $(VENV)/.installed  ## show the supervised tokens of the first rows of RECIPE (LIMIT=5, JSON=1, HTML=page.html)
	$(SFT) preview $(RECIPE) $(if $(LIMIT),--limit $(LIMIT)) $(if $(JSON),--json) $(if $(HTML),--html $(HTML)) $(ARGS)

report: $(VENV)/.installed  ## write the report page of the latest run (or RUN=): RUN/report.html
	$(SFT) report $(RUN)

bench: $(VENV)/.installed  ## benchmark against plain TRL: table + bench_results/bench.json (GPU rows: LLAMA_PROCESSOR=dir)
	$(PY) bench/bench.py
	@if $(PY) -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then \
		$(PY) bench/gpu.py --processor $(LLAMA_PROCESSOR); else echo "GPU rows skipped: no CUDA device"; fi

test: $(VENV)/.installed  ## the test suite (what CI runs)
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed  ## ruff
	$(PY) -m ruff check sft scripts tests bench

clean:  ## remove the smoke artefacts and outputs (not the venv)
	rm -rf .smoke outputs

export-adapter: $(VENV)/.installed  ## adapter of the latest run (or RUN=), ready to ship, into OUT= (default exports/)
	$(SFT) export-adapter $(if $(RUN),--run $(RUN)) $(if $(OUT),--out $(OUT)) $(if $(STATE_DICT),--state-dict) $(if $(FORCE),--force)

merge: $(VENV)/.installed  ## adapter merged into an unquantized base: RUN= OUT= DTYPE=bf16|fp16|fp32
	$(SFT) merge $(if $(RUN),--run $(RUN)) $(if $(OUT),--out $(OUT)) --dtype $(or $(DTYPE),bf16) $(if $(FORCE),--force)

predict: $(VENV)/.installed  ## greedy predictions: MODEL= (run or merged; default latest run) DATA= OUT=
	$(SFT) predict $(MODEL) $(DATA) $(if $(OUT),--out $(OUT))
