# Two entry points for newcomers: `make serve` and `make test`. Each builds its own
# environment from nothing (a venv in .venv) and reuses it while pyproject.toml is unchanged.
PYTHON ?= python3
VENV ?= .venv
# ONNX Runtime build for `make serve`: cpu (onnxruntime) or gpu (onnxruntime-gpu). Never both in
# one environment, so a GPU environment gets its own folder.
RUNTIME ?= cpu
ifeq ($(RUNTIME),gpu)
VENV := .venv-gpu
endif
BIN := $(VENV)/bin

.PHONY: serve test test-fast test-tools lint bench bench-ab train-default evaluate-default train-rendered clean help

help:
	@echo "make serve            set up $(VENV) and start the service on the shipped model (RUNTIME=gpu for CUDA)"
	@echo "make test             set up $(VENV) with training and test tools and run every test"
	@echo "make lint             ruff (lint and format check) and mypy, as configured in pyproject.toml"
	@echo "make test-tools       install promtool, headless chromium and the image tools for the tests (Debian, as root; run by make test)"
	@echo "make bench            detection vs facenet-pytorch and HTTP throughput on a mixed photo set (docs/benchmarks.md)"
	@echo "make bench-ab BEFORE=REV   this checkout's speed side by side with commit REV's, in one run"
	@echo "make train-default FERPLUS=DIR     reproduce the shipped default model (FERPlus, docs/datasets.md)"
	@echo "make evaluate-default FERPLUS=DIR  re-score the shipped default model's files"
	@echo "make train-rendered   reproduce the rendered-face demo model (pfvit-micro-rendered)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.serve-$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(RUNTIME)]'
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[cpu,train,client,ray,dev]'
	# facenet-pytorch only supplies the MTCNN weights to tools/convert_mtcnn.py and the
	# reference detector in the benchmark; its own pins (old torch, torchvision, numpy<2) must
	# never be resolved, hence --no-deps.
	$(BIN)/python -m pip install --quiet --no-deps facenet-pytorch==2.6.0
	touch $@ $(VENV)/.serve-cpu

# MALLOC_ARENA_MAX=2: glibc's per-thread heaps otherwise keep freed image buffers (docs/deploy.md).
serve: $(VENV)/.serve-$(RUNTIME)
	MALLOC_ARENA_MAX=2 $(BIN)/python -m service

# System tools some tests need, from Debian, installed where that is possible (root with apt-get,
# as on CI); elsewhere the tests that need them skip and say why.
# - promtool checks the Prometheus config and the dashboard's PromQL (tests/test_deploy.py); it
#   is not on PyPI; Debian's prometheus package ships it.
# - chromium and chromium-driver run the demo page in a real headless browser
#   (tests/test_browser.py); Selenium from pip drives them, nothing is downloaded at test time.
# - debootstrap, buildah and podman build the CPU image from the Dockerfile and run it
#   (tests/test_image.py): debootstrap makes its Debian base, buildah builds and runs it.
TEST_TOOLS := promtool:prometheus chromium:chromium chromedriver:chromium-driver \
	debootstrap:debootstrap buildah:buildah podman:podman
test-tools:
	@missing=""; for pair in $(TEST_TOOLS); do \
		command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages:$$missing"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } \
			|| echo "could not install$$missing: the tests that need them will skip"; \
	else echo "missing$$missing; installing needs root with apt-get: the tests that need them will skip"; fi

test: $(VENV)/.test test-tools
	$(BIN)/python -m pytest

test-fast: $(VENV)/.test test-tools
	$(BIN)/python -m pytest -m "not slow"

# The lint, format and type gate (settings in pyproject.toml; the tools are pinned in the dev
# extra). `ruff format` fixes what the format check finds.
lint: $(VENV)/.test
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .
	$(BIN)/python -m mypy

bench: $(VENV)/.test
	$(BIN)/python tools/bench_photos.py
	$(BIN)/python tools/bench_service.py

# A change side by side with the code before it: make bench-ab BEFORE=<commit> (docs/benchmarks.md).
BEFORE ?= HEAD~1
bench-ab: $(VENV)/.test
	rm -rf .bench-before && git worktree add --force --detach .bench-before $(BEFORE)
	$(BIN)/python tools/bench_ab.py .bench-before; status=$$?; git worktree remove --force .bench-before; exit $$status

# FERPlus: microsoft/FERPlus's labels beside FER2013's original images (docs/datasets.md).
FERPLUS ?=

train-default: $(VENV)/.test
	@test -n "$(FERPLUS)" || { echo "usage: make train-default FERPLUS=/path/to/ferplus (see docs/datasets.md)"; exit 2; }
	$(BIN)/python -m training.ferplus_model --ferplus "$(FERPLUS)"

evaluate-default: $(VENV)/.test
	@test -n "$(FERPLUS)" || { echo "usage: make evaluate-default FERPLUS=/path/to/ferplus (see docs/datasets.md)"; exit 2; }
	$(BIN)/python -m training.ferplus_model --ferplus "$(FERPLUS)" --evaluate-only

train-rendered: $(VENV)/.test
	$(BIN)/python -m training.default_model

clean:
	rm -rf .venv .venv-gpu .pytest_cache build *.egg-info
