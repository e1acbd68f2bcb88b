# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests drive as real peers (installed when run as root).
SYSTEM_PACKAGES := dicom3tools dcmtk orthanc openssl
SYSTEM_TOOLS := dciodvfy storescu storescp Orthanc openssl

.PHONY: run test venv system-deps lint bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

# Installs the peers the tests need when they are missing and we are root; otherwise the
# tests say what is missing (and fail under CI=true).
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
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
run: venv
	$(BIN)/dicomnode serve --demo

test: venv system-deps lint
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check dicomnode tests bench tools
	$(BIN)/mypy

bench: venv
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/scrub.py
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
