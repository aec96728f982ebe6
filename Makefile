# The two commands: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
# On a machine with an NVIDIA GPU, pip's default torch build (CUDA) is right. Without one,
# pin the CPU wheel: never pull several GB of CUDA packages onto a CPU-only machine.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_SPEC ?= $(if $(HAS_GPU),torch,torch==2.13.0)

.PHONY: setup demo test test-fast addon clean versions-setup ui-setup test-versions test-ui

# Blender 4.2 LTS and 5.0 as bpy modules, each in its own venv (only bpy and what its wheel
# needs), for the smoke tests in tests/versions/. The main venv is 4.5 LTS.
BPY42_VENV := .venv-bpy42
BPY50_VENV := .venv-bpy50
# A real Blender with a window (tests/ui/): Debian's blender package (3.4 on bookworm), an X
# server without a screen, a key-press tool, and numpy for Blender's system Python.
UI_APT_PACKAGES := blender xvfb xdotool python3-numpy

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet "bpy==4.5.*" -e ".[test]"
	$(PY) -c "import torch, bpy, skimage, trimesh, safetensors; print('set up: torch', torch.__version__, '| blender', bpy.app.version_string)"
	touch $@

demo: setup
	$(PY) scripts/demo.py

# The extra Blenders are best effort: when one cannot be installed (no network, no apt, not
# root), its tests skip and say why, and the rest of the suite still runs.
test: setup
	-@$(MAKE) --no-print-directory versions-setup
	-@$(MAKE) --no-print-directory ui-setup
	$(PY) -m pytest -q -rs

# Everything but the tests that run real Blender or train for long.
test-fast: setup
	$(PY) -m pytest -q -m "not blender and not slow"

addon: setup
	$(PY) build_addon.py
	$(PY) build_addon.py --legacy

versions-setup: $(BPY42_VENV)/.installed $(BPY50_VENV)/.installed

$(BPY42_VENV)/.installed:
	rm -rf $(BPY42_VENV) && $(PYTHON) -m venv $(BPY42_VENV)
	$(BPY42_VENV)/bin/python -m pip install --quiet "bpy==4.2.*" numpy
	$(BPY42_VENV)/bin/python -c "import bpy; print('set up: blender', bpy.app.version_string)"
	touch $@

$(BPY50_VENV)/.installed:
	rm -rf $(BPY50_VENV) && $(PYTHON) -m venv $(BPY50_VENV)
	$(BPY50_VENV)/bin/python -m pip install --quiet "bpy==5.0.*" numpy
	$(BPY50_VENV)/bin/python -c "import bpy; print('set up: blender', bpy.app.version_string)"
	touch $@

# Installs the UI test's packages with apt when they are missing and apt can be used (root or
# password-less sudo); otherwise says so and leaves the machine alone.
ui-setup:
	@if command -v blender >/dev/null && command -v Xvfb >/dev/null && command -v xdotool >/dev/null \
	    && /usr/bin/python3 -c "import numpy" 2>/dev/null; then \
	  echo "ui-setup: blender, Xvfb, xdotool and numpy are installed"; \
	elif ! command -v apt-get >/dev/null; then \
	  echo "ui-setup: no apt-get here: install $(UI_APT_PACKAGES) yourself to run tests/ui"; exit 1; \
	else \
	  SUDO=""; if [ "$$(id -u)" != 0 ]; then SUDO="sudo -n"; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y --no-install-recommends $(UI_APT_PACKAGES) \
	    || { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends $(UI_APT_PACKAGES); } \
	    || { echo "ui-setup: apt-get could not install $(UI_APT_PACKAGES): tests/ui will skip"; exit 1; }; \
	fi

test-versions: setup versions-setup
	$(PY) -m pytest -q -rs tests/versions

test-ui: setup ui-setup
	$(PY) -m pytest -q -rs tests/ui

clean:
	rm -rf $(VENV) $(BPY42_VENV) $(BPY50_VENV) dist out .pytest_cache
