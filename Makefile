# Two commands: `make demo` and `make test`. Both set up .venv when needed and are idempotent.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.installed
PYTEST  ?= -q -rs
# Tests run single-threaded (tests/conftest.py), so `make test` spreads them over the cores with
# pytest-xdist (XDIST= runs them serially), then runs the real-Slurm tests alone, one at a time:
# their clusters and batch jobs (ports from the job id) must not meet other tests' ranks.
XDIST   ?= -n 2
# DeepSpeed's accelerator: cuda where an NVIDIA driver is (nvidia-smi on PATH), else cpu; a value the
# caller sets is kept. Never empty: DeepSpeed rejects DS_ACCELERATOR="".
ifeq ($(strip $(DS_ACCELERATOR)),)
DS_ACCELERATOR := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
endif
export DS_ACCELERATOR

.PHONY: setup slurm demo test test-fast clean

# torch first, as the CPU build on machines without an NVIDIA driver (a plain `torch` requirement
# would pull a multi-GB CUDA build); DeepSpeed without build isolation so it builds against that torch.
$(STAMP): setup.py Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q torch; else $(PIP) install -q torch==2.13.0; fi
	$(PIP) install -q "numpy<2.3" ninja packaging psutil py-cpuinfo pydantic hjson msgpack einops tqdm
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation deepspeed==0.19.8
	$(PIP) install -q --no-build-isolation -e ".[test]"
	touch $(STAMP)

# sora._C (csrc/): built by the install above; rebuilt here when a kernel source changes (ninja
# recompiles only what changed). SORA_SKIP_EXT=1 skips it, MAX_JOBS=N sets the compile jobs.
EXT_SRC := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)
EXT     := $(VENV)/.ext-built
$(EXT): $(STAMP) $(EXT_SRC)
	$(PY) setup.py -q build_ext --inplace
	touch $(EXT)

setup: $(STAMP) $(EXT)

# The setup's seconds go into the demo's result file (benchmarks/results/demo_<accelerator>.json).
demo:
	@t0=$$(date +%s); $(MAKE) --no-print-directory setup && \
	  SORA_SETUP_SECONDS=$$(( $$(date +%s) - t0 )) bash scripts/demo.sh

# Slurm + munge for the real-Slurm launcher tests (tests/test_launcher_slurm.py): installed with apt-get
# when missing and we are root; otherwise the script says why and those tests skip with that reason.
slurm:
	bash scripts/install_slurm.sh

test: setup slurm
	$(PY) -m pytest $(XDIST) $(PYTEST) -m "not slurm" tests
	$(PY) -m pytest $(PYTEST) -m slurm tests

test-fast: setup
	$(PY) -m pytest $(XDIST) $(PYTEST) -m "not slow" tests

clean:
	rm -rf runs data
