# edgetl: `make demo` (train -> export -> bench on the bundled data) and `make test` set everything up.
PYTHON ?= python3
VENV := .venv
LIGHT := .venv-light
BIN := $(VENV)/bin
SHARED ?= $(abspath ../shared)
# Shared assets when present (dev/CI); otherwise Keras' normal weight download and your own DATA=.
ifneq ($(wildcard $(SHARED)/weights),)
export EDGETL_WEIGHTS_DIR ?= $(SHARED)/weights
endif
DATA ?= $(if $(wildcard $(SHARED)/data/hymenoptera),$(SHARED)/data/hymenoptera,)
WEIGHTS ?= imagenet
ALPHA ?= 0.35
SIZE ?= 224
RUN ?= runs/demo
PYTEST_ARGS ?=
# the TensorFlow tiers run one test file per worker, one worker per core
XDIST ?= -n auto --dist loadfile

.PHONY: demo test test-unit bench bench-train bench-decode bench-resize bench-head bench-export bench-runtime bench-compare bench-int8-sweep bench-remote clean venv light arm-env

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[train,test,cluster]'
	touch $@

# Core install only (no TensorFlow): proves predict/bench run on a Pi-like install.
$(LIGHT)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(LIGHT)
	$(LIGHT)/bin/pip install -q --upgrade pip
	$(LIGHT)/bin/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.stamp
light: $(LIGHT)/.stamp

# aarch64 python + runtimes under QEMU for `edgetl bench --emulate` (~130 MB once, in ~/.cache/edgetl/arm-env)
arm-env: $(VENV)/.stamp
	$(BIN)/python -m edgetl.bench.emulate setup

demo: $(VENV)/.stamp
	@if [ -z "$(DATA)" ]; then \
	  echo "No DATA: run 'make demo DATA=/path/to/images' with one sub-folder per class (or train/ and val/)."; exit 2; fi
	@if [ -z "$$EDGETL_WEIGHTS_DIR" ] && [ "$(WEIGHTS)" = imagenet ]; then \
	  echo "Using Keras' ImageNet weight download (cached in ~/.keras/models). Offline? WEIGHTS=/path/to.h5 or EDGETL_WEIGHTS_DIR=dir"; fi
	$(BIN)/edgetl train "$(DATA)" --out $(RUN) --alpha $(ALPHA) --image-size $(SIZE) --weights "$(WEIGHTS)" --overwrite
	@# a format that fails its check (exit 3) is named in the bench table; the others are still benched
	$(BIN)/edgetl export $(RUN) --int8 --keep-going || [ $$? -eq 3 ]
	$(BIN)/edgetl bench $(RUN) || [ $$? -eq 3 ]

# Everything: the import contracts, the unit tier in the light install (no TensorFlow there), then the
# tf, integration and emulated tiers in the full one, one test file per core.
test: $(VENV)/.stamp $(LIGHT)/.stamp arm-env
	$(BIN)/lint-imports
	$(LIGHT)/bin/python -m pytest -q tests/unit $(PYTEST_ARGS)
	EDGETL_LIGHT_PYTHON=$(abspath $(LIGHT))/bin/python EDGETL_SHARED=$(SHARED) $(BIN)/python -m pytest -q $(XDIST) \
	  tests/tf tests/integration tests/emulated $(PYTEST_ARGS)

test-unit: $(LIGHT)/.stamp
	$(LIGHT)/bin/python -m pytest -q tests/unit $(PYTEST_ARGS)

# All benchmarks, one after another (JSON in benchmarks/results/).
bench: bench-train bench-decode bench-resize bench-head bench-export bench-runtime bench-compare bench-int8-sweep bench-remote

# Timing benchmarks run under one lock so two never overlap on the shared 2-core machine.
bench-train: $(VENV)/.stamp
	flock /tmp/edgetl-cpu.lock $(BIN)/python benchmarks/bench_train.py $(BENCH_ARGS)

# decode: camera-size photos decoded in full or at a reduced JPEG DCT scale, train on them vs the seed recipe
# -> benchmarks/results/decode.json
bench-decode: $(VENV)/.stamp
	flock /tmp/edgetl-cpu.lock $(BIN)/python benchmarks/bench_decode.py $(BENCH_ARGS)

# resize: point-sampled vs antialiased bilinear over both sets and harder variants -> benchmarks/results/resize.json
bench-resize: $(VENV)/.stamp
	flock /tmp/edgetl-cpu.lock $(BIN)/python benchmarks/bench_resize.py $(BENCH_ARGS)

# head: the head's training settings against the defaults, 10 cases x 5 seeds -> benchmarks/results/head.json
bench-head: $(VENV)/.stamp
	flock /tmp/edgetl-cpu.lock $(BIN)/python benchmarks/bench_head.py $(BENCH_ARGS)

# export: accuracy and size of every format, PTQ and QAT runs, ONNX int8 paths -> benchmarks/results/export.json
bench-export: $(VENV)/.stamp
	flock /tmp/edgetl-cpu.lock $(BIN)/python benchmarks/bench_export.py $(BENCH_ARGS)

# bench: edgetl bench on the hymenoptera runs (alpha 0.35 and 0.5, 224 px; created if missing)
bench-runtime: $(VENV)/.stamp
	flock /tmp/edgetl-cpu.lock $(BIN)/python benchmarks/bench_runtime.py $(BENCH_ARGS)

# int8 vs fp32 over widths, sizes and threads -> benchmarks/results/int8_sweep.json (takes the lock itself,
# only while timing: its conversions run outside it)
bench-int8-sweep: $(VENV)/.stamp
	$(BIN)/python benchmarks/bench_int8_sweep.py $(BENCH_ARGS)

# compare: `edgetl compare` on hymenoptera, and --adapt-bn before/after on shifted copies -> benchmarks/results/compare.json
bench-compare: $(VENV)/.stamp
	flock /tmp/edgetl-cpu.lock $(BIN)/python benchmarks/bench_compare.py $(BENCH_ARGS)

# bench --remote against a local bench of the same files, the remote being sshd on 127.0.0.1 -> benchmarks/results/bench_remote.json
bench-remote: $(VENV)/.stamp $(LIGHT)/.stamp
	flock /tmp/edgetl-cpu.lock $(BIN)/python benchmarks/bench_remote.py --remote-python $(abspath $(LIGHT))/bin/python $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(LIGHT) runs .pytest_cache build
