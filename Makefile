# Vivim Edge: `make demo` (set up a fresh machine, run the live runtime on the bundled clip), `make test`.
#
# Which Python: PYTHON if given, else the active virtual environment's or the system's python3; where the system's
# refuses pip installs (PEP 668: Debian 12, Ubuntu 23.04 and later) and no environment is active, a virtual
# environment in .venv, created on first use.
SYS_PYTHON ?= python3
VENV ?= .venv
EXTERNALLY_MANAGED := $(shell $(SYS_PYTHON) -c "import os, sys, sysconfig; print(int(sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED'))))" 2>/dev/null)
ifeq ($(EXTERNALLY_MANAGED),1)
PYTHON ?= $(VENV)/bin/python
else
PYTHON ?= $(SYS_PYTHON)
endif
PIP ?= $(PYTHON) -m pip install --disable-pip-version-check -q
# CPU-only machines can fetch the smaller CPU wheel: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
DEMO_CLIP ?= vivim/assets/demo_clip.mp4
DEMO_OUT ?= runs/demo
# One intra-op thread: immune to OpenMP oversubscription on shared CI cores (try DEMO_THREADS=2 on an idle machine).
DEMO_THREADS ?= 1
# The install stamp is per interpreter and active environment: another Python or environment installs again.
STAMP := build/.demo-deps-$(subst /,-,$(PYTHON)$(VIRTUAL_ENV)$(CONDA_PREFIX))

.PHONY: demo setup test clean-demo

# Install once per pyproject.toml change (the stamp lives in the git-ignored build/ folder).
$(STAMP): pyproject.toml $(if $(filter $(VENV)/bin/python,$(PYTHON)),$(VENV)/pyvenv.cfg)
	$(PIP) "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PIP) -e ".[runtime,data]"
	@mkdir -p $(dir $(STAMP)) && touch $(STAMP)

# pyvenv.cfg, not bin/python: that is a link to the system binary, whose old date would make a fresh .venv look
# installed already
$(VENV)/pyvenv.cfg:
	@echo "$(SYS_PYTHON) refuses pip installs into the system (PEP 668): creating a virtual environment in $(VENV)"
	@$(SYS_PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "error: $(SYS_PYTHON) -m venv $(VENV) failed: install python3-venv (apt install python3-venv), or activate an environment of your own and run make again" >&2; exit 2; }

setup: $(STAMP)

demo: $(STAMP)
	@test -f $(DEMO_CLIP) || { echo "error: $(DEMO_CLIP) is missing (it ships with the package; regenerate it with vivim-data)"; exit 2; }
	@echo "vivim-run --video $(DEMO_CLIP) --checkpoint demo --device cpu --threads $(DEMO_THREADS) --headless --save $(DEMO_OUT)/overlay.mp4 --stats $(DEMO_OUT)/stats.json --strip $(DEMO_OUT)/strip.png"
	$(PYTHON) -m vivim.runtime.cli --video $(DEMO_CLIP) --checkpoint demo --device cpu --threads $(DEMO_THREADS) --headless \
		--save $(DEMO_OUT)/overlay.mp4 --stats $(DEMO_OUT)/stats.json --strip $(DEMO_OUT)/strip.png
	@echo "next: open $(DEMO_OUT)/overlay.mp4 and $(DEMO_OUT)/strip.png; live camera: vivim-run --camera /dev/video0 --checkpoint demo --show"
	@$(if $(filter $(VENV)/bin/python,$(PYTHON)),echo "(the tools are installed in $(VENV): run . $(VENV)/bin/activate first)")

# The full CPU test suite (installs the test dependencies the same way CI does).
test: $(if $(filter $(VENV)/bin/python,$(PYTHON)),$(VENV)/pyvenv.cfg)
	PYTHON=$(PYTHON) bash .ci/install
	$(PYTHON) -m pytest -q

clean-demo:
	rm -rf $(DEMO_OUT)
