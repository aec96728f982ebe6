# The two commands: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
# On a machine with an NVIDIA GPU, pip's default torch build (CUDA) is right. Without one,
# pin the CPU wheel: never pull several GB of CUDA packages onto a CPU-only machine.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_SPEC ?= $(if $(HAS_GPU),torch,torch==2.13.0)

.PHONY: setup demo test test-fast addon clean

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

test: setup
	$(PY) -m pytest -q

# Everything but the tests that run real Blender or train for long.
test-fast: setup
	$(PY) -m pytest -q -m "not blender and not slow"

addon: setup
	$(PY) build_addon.py

clean:
	rm -rf $(VENV) dist out .pytest_cache
