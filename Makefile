# Edge Stream: `make run` starts the gateway, `make test` runs every test, `make test-fast`
# only the unit layer.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= config/gateway.yaml

.PHONY: help install deps run test test-fast faults check bench bench-targets bench-compare clean preflight image image-test

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@python3 -c 'import ensurepip' 2>/dev/null || bash scripts/install-deps python3-venv
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## create the venv and install the gateway with its test tools

deps: ## install the Debian servers the gateway and its tests use (needs root)
	bash scripts/install-deps

run: install ## run the gateway on config/gateway.yaml (MQTT on 127.0.0.1:1883)
	@[ -x /usr/sbin/mosquitto ] && command -v mosquitto_pub >/dev/null \
	  || bash scripts/install-deps mosquitto mosquitto-clients
	$(VENV)/bin/edge-stream run -c $(CONFIG)

test: deps install ## run every test (unit, integration against real servers, end to end)
	$(VENV)/bin/pytest -q --durations=25

test-fast: install ## run the unit layer only: pure logic, no server, no subprocess
	$(VENV)/bin/pytest -q -m unit

faults: deps install ## run the long scenarios (`long` marker: tests/faults, the other sinks' e2e outages; docs/reliability.md)
	$(VENV)/bin/pytest -q -m long tests

check: install ## lint, format check, types
	$(VENV)/bin/ruff check gateway tests bench
	$(VENV)/bin/ruff format --check gateway tests bench
	$(VENV)/bin/mypy gateway

bench: deps install ## run the benchmarks and print the figures, the issue's targets last
	@command -v npm >/dev/null || bash scripts/install-deps npm
	$(VENV)/bin/python bench/run.py

bench-targets: deps install ## every performance target with its figure, met or missed (bench/targets.py)
	@command -v npm >/dev/null || bash scripts/install-deps npm
	$(VENV)/bin/python bench/targets.py

bench-compare: deps install ## Edge Stream against Node-RED's batched flow in one run (bench/compare.py)
	@command -v npm >/dev/null || bash scripts/install-deps npm
	$(VENV)/bin/python bench/compare.py

preflight: ## check (and set up) what `make image` needs: root, binfmt_misc with qemu-aarch64, tools
	bash scripts/build-image preflight

image: install ## build the arm64 appliance image: build/edge-stream-<version>-arm64.img.xz (root)
	PYTHON=$(abspath $(PY)) bash scripts/build-image

image-test: install ## boot that image under qemu-system-aarch64 and check it from outside
	bash scripts/install-deps qemu-system-arm openssh-client mtools fdisk xz-utils
	$(PY) scripts/image_test.py

clean: ## remove the venv and local data
	rm -rf $(VENV) data .pytest_cache
