# mxnet-byoc: every entry point a developer or CI needs. Each target installs what it needs, so a
# fresh Debian machine (root, apt and PyPI reachable) runs any of them directly.
#
#   make test        the test command: venv, Docker engine, base image, both images, then pytest
#   make demo        train and serve MNIST in the CPU image (or the venv where no Docker engine runs)
#   make image-cpu   build $(CPU_IMAGE)          make image-gpu   build $(GPU_IMAGE)
#   make image-cpu-lean  build $(CPU_LEAN_IMAGE): without Horovod, MPI and the libraries for users' scripts
#   make bench       the benchmarks (BENCH=serving: one part), their figures into docs/performance.md
#   make lint        ruff, no words about the project's history, and shellcheck on the shell scripts
#   make locks       regenerate docker/requirements-*.lock after changing the pins they come from
#   make client-venv .venv-client: byoctl with the SageMaker Python SDK 3.x (no MXNet)
#   make test-sdk3   the SDK 3 tests, in .venv-client (part of `make test`)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

CPU_IMAGE ?= mxnet-byoc:cpu
GPU_IMAGE ?= mxnet-byoc:gpu
CPU_LEAN_IMAGE ?= mxnet-byoc:cpu-lean
BASE_IMAGE ?= debian:bookworm-slim
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLIENT_VENV := .venv-client
CLIENT_PY := $(CLIENT_VENV)/bin/python
PYTEST_ARGS ?=
SDK3_PYTEST_ARGS ?=
export CPU_IMAGE GPU_IMAGE CPU_LEAN_IMAGE BASE_IMAGE

# A TLS-inspecting proxy's CA for pip inside `docker build` (used in the builder stage only, see
# docker/ca/README.md). Defaults to pip's own CA setting on this machine, when it has one; give
# EXTRA_CA=/path/to/ca.pem to choose another, or EXTRA_CA= to use none.
EXTRA_CA ?= $(or $(PIP_CERT),$(shell sed -n 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*//p' /etc/pip.conf 2>/dev/null | head -n 1))

DOCKER_BUILD := docker build --network host --build-arg BASE_IMAGE=$(BASE_IMAGE)

.PHONY: venv client-venv docker host-packages base-image extra-ca image-cpu image-cpu-lean image-gpu images test test-sdk3 demo bench lint locks

# The virtualenv, reinstalled when a requirements file changes (the stamp records the last install).
venv: $(VENV)/.installed
$(VENV)/.installed: requirements-dev.txt docker/requirements.txt pyproject.toml container/pyproject.toml devkit/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# byoctl's own environment with SDK 3.x: MXNet's numpy<1.24 holds .venv on SDK 2 (see pyproject.toml).
client-venv: $(CLIENT_VENV)/.installed
$(CLIENT_VENV)/.installed: requirements-client.txt pyproject.toml container/pyproject.toml devkit/pyproject.toml
	test -x $(CLIENT_PY) || $(PYTHON) -m venv $(CLIENT_VENV)
	$(CLIENT_PY) -m pip install -q -r requirements-client.txt
	touch $@

docker:
	scripts/ensure-docker.sh

base-image: docker
	BASE_IMAGE=$(BASE_IMAGE) scripts/make-base-image.sh

extra-ca:
	rm -f docker/ca/extra-ca.pem
	if [ -n "$(EXTRA_CA)" ]; then cp "$(EXTRA_CA)" docker/ca/extra-ca.pem; fi

image-cpu: base-image extra-ca
	$(DOCKER_BUILD) -f docker/Dockerfile.cpu -t $(CPU_IMAGE) .

# The lean image is the first stages of Dockerfile.cpu: after image-cpu, a cache hit.
image-cpu-lean: base-image extra-ca
	$(DOCKER_BUILD) --target lean -f docker/Dockerfile.cpu -t $(CPU_LEAN_IMAGE) .

image-gpu: base-image extra-ca
	$(DOCKER_BUILD) -f docker/Dockerfile.gpu -t $(GPU_IMAGE) .

images: image-cpu image-cpu-lean image-gpu

# Packages of this machine: nginx, which `serve` runs in front of gunicorn (in the tests and benches as in the
# images), and wrk, the load that the tests and benches put on serve.
host-packages:
	test -x /usr/sbin/nginx -a -x /usr/bin/wrk || DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends nginx wrk \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx wrk; }

# pytest's exit code 5 (no test collected) is a failure here, as it is for CI.
test: venv host-packages images
	$(PY) -m pytest tests $(PYTEST_ARGS)
	$(MAKE) test-sdk3

# tests/container/sdk3 (SDK 3's ModelTrainer and local mode against the CPU image) and byoctl's AWS calls under
# SDK 3; the rest of tests/ runs in .venv, under SDK 2 (pyproject.toml keeps pytest out of sdk3/).
test-sdk3: client-venv image-cpu
	$(CLIENT_PY) -m pytest tests/container/sdk3 tests/unit/test_byoctl_aws_calls.py tests/unit/test_byoctl_imports.py \
		$(SDK3_PYTEST_ARGS)

demo: venv host-packages
	$(PY) -m devkit.demo $(DEMO_ARGS)

# BENCH="serving training.accuracy ..." runs only those benches or modes (bench/run.py); what each measured goes
# to bench/results/, then into docs/performance.md and README's Performance table, whatever ran or failed.
bench: venv host-packages
	status=0; $(PY) bench/run.py $(BENCH) || status=$$?; scripts/gen-readme-tables.sh; exit $$status

# scripts/check_no_history.py: README, docs/ and comments say what the project is, never how it was made.
lint: venv
	$(PY) -m ruff check .
	$(PY) scripts/check_no_history.py
	command -v shellcheck >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q shellcheck \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q shellcheck; }
	shellcheck scripts/*.sh .ci/run build_and_push.sh

locks: venv
	scripts/lock-requirements.sh
