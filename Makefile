# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests drive as real peers (installed when run as root).
SYSTEM_PACKAGES := dicom3tools dcmtk orthanc orthanc-dicomweb openssl fonts-dejavu-core prometheus systemd chromium haproxy buildah debootstrap
SYSTEM_TOOLS := dciodvfy storescu storescp Orthanc openssl promtool systemd-analyze chromium haproxy buildah debootstrap
# Files the tests need from packages that install no program (Orthanc's DICOMweb plugin).
SYSTEM_FILES := /usr/share/orthanc/plugins/libOrthancDicomWeb.so

.PHONY: run test venv system-deps lint bench clean

# The node and what it runs by default (the pixel stage included).
$(BIN)/.base: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# What the tests need on top: test tools, Faker for the synthetic set, and the diffusion
# stack (CPU torch) for the tiny random-weight inpainting pipeline.
$(BIN)/.test: $(BIN)/.base
	$(BIN)/python -m pip install --quiet -e '.[dev,eval,diffusion]'
	# checkov (security checks of deploy/kubernetes and docker/Dockerfile) pins old packaging
	# and networkx: a virtualenv of its own keeps those pins out of the one the tests run in.
	test -x .venv-checkov/bin/checkov || { $(PYTHON) -m venv .venv-checkov && \
		.venv-checkov/bin/python -m pip install --quiet 'checkov>=3.2,<4'; }
	touch $@

venv: $(BIN)/.test

# Installs the peers the tests need when they are missing and we are root; otherwise the
# tests say what is missing (and fail under CI=true).
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	for f in $(SYSTEM_FILES); do [ -e $$f ] || missing="$$missing $$f"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages:$(SYSTEM_PACKAGES)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
		else \
			echo "missing:$$missing (run 'make test' as root, or apt-get install $(SYSTEM_PACKAGES))"; \
		fi; \
	fi

# Starts the node on its embedded defaults: AE title DICOMNODE on 127.0.0.1:11112, clean
# copies under ./var/out, spool in ./var/spool, and a PUBLIC demo secret (it says so).
# Other ports: make run PORT=11113 METRICS_PORT=9109 (each passed only when given).
run: $(BIN)/.base
	$(BIN)/dicomnode serve --demo$(if $(PORT), --port $(PORT))$(if $(METRICS_PORT), --metrics-port $(METRICS_PORT))$(if $(REVIEW_PORT), --review-port $(REVIEW_PORT))

test: $(BIN)/.test system-deps lint
	$(BIN)/python -m pytest -q --durations=25

lint: $(BIN)/.test
	$(BIN)/ruff check dicomnode tests bench tools
	$(BIN)/mypy

bench: $(BIN)/.test
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@command -v tesseract >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq tesseract-ocr >/dev/null; } || true
	$(BIN)/python bench/scrub.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/pixels.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
