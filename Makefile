# VoxelHub: `make demo` and `make test` do everything on a fresh machine (Debian 12, as root or
# with sudo for the Debian packages).  The venv is built from Debian's /usr/bin/python3 because
# hub users must be able to execute it (the default Python here lives under /root, mode 0700).

PYTHON      ?= /usr/bin/python3
VENV        := .venv
BIN         := $(VENV)/bin
SHARED      ?= $(abspath ../shared)
# A checkout inside a folder other users cannot enter (no o+x, as under /root): hub users and the
# data service could not run a venv or read a store inside it, so as root the venv and the demo's
# state live under /opt/voxelhub/<hash of this path>/ (.venv links there); the hub publishes the
# code users import itself (extensions/voxelhub_hub/runtime.py).
PRIVATE_DIR := $(shell $(PYTHON) -c "import os; d = [os.path.realpath('.')]; [d.append(os.path.dirname(d[-1])) for _ in range(64) if d[-1] != '/']; print(next((x for x in d if not os.stat(x).st_mode & 1), ''))")
OUTSIDE     := $(if $(and $(PRIVATE_DIR),$(filter 0,$(shell id -u))),/opt/voxelhub/$(shell printf %s "$(CURDIR)" | sha256sum | cut -c1-12))
DEMO_STATE  ?= $(if $(OUTSIDE),$(OUTSIDE)/demo,$(abspath .demo))
APT_STAMP   := $(VENV)/.apt-installed
VENV_STAMP  := $(VENV)/.installed
# rt-utils for the ROI tests and benchmark, in a venv of its own (requirements/rtutils.txt)
RTUTILS     := .venv-rtutils
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install test lint typecheck pytest demo lab-demo bench clean rtutils

install: $(VENV_STAMP)

# the venv's folder, here or (private checkout, as root) under $(OUTSIDE) with .venv linking to it
VENV_DIR = test -e $(VENV) || { \
	  if [ -n "$(OUTSIDE)" ]; then \
	    echo "$(PRIVATE_DIR) is private (no o+x): the venv goes to $(OUTSIDE)/venv, where hub users can run it"; \
	    mkdir -p $(OUTSIDE)/venv && chmod 755 /opt/voxelhub $(OUTSIDE) && ln -s $(OUTSIDE)/venv $(VENV); \
	  else mkdir -p $(VENV); fi; }

# Debian packages the tests and the demo need: PostgreSQL (catalog tests), Chromium (browser
# tests; Playwright drives /usr/bin/chromium, never `playwright install`), Node.js + npm
# (configurable-http-proxy), Orthanc with its DICOMweb plugin and dcmtk (the DICOM edge,
# extensions/voxelhub_dicom; storescu in its tests), git (nbgitpuller), bubblewrap (the sandbox
# of autograding kernels).  One `apt-get update`, and only when something is missing.
$(APT_STAMP):
	@$(VENV_DIR)
	@missing=""; \
	  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  [ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	  command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	  [ -x /usr/sbin/Orthanc ] || missing="$$missing orthanc"; \
	  [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$$missing orthanc-dicomweb"; \
	  command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	  command -v restic >/dev/null || missing="$$missing restic"; \
	  command -v git >/dev/null || missing="$$missing git"; \
	  command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	  if [ -n "$$missing" ]; then \
	    $(SUDO) apt-get update && \
	    $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	  fi
	@touch $@

$(VENV_STAMP): pyproject.toml requirements/lock.txt $(APT_STAMP)
	@$(VENV_DIR)
	@test -x $(BIN)/python || $(PYTHON) -m venv $$(realpath $(VENV))
	$(BIN)/python -m pip install --quiet --upgrade "pip>=26"
	$(BIN)/python -m pip install --quiet -c requirements/lock.txt -e ".[test,dev,hub,teaching]"
	@touch $@

rtutils: $(RTUTILS)/.installed

$(RTUTILS)/.installed: requirements/rtutils.txt
	@test -x $(RTUTILS)/bin/python || $(PYTHON) -m venv $(RTUTILS)
	$(RTUTILS)/bin/python -m pip install --quiet -r requirements/rtutils.txt
	@touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# PostgreSQL for the catalog tests: a throwaway cluster on loopback, owned by an unprivileged
# user when run as root (postgres refuses to run as root), stopped after the tests.
pytest: install hub-deps rtutils
	@set -e; PGBIN=$$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1); \
	  PGPORT=$$($(BIN)/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'); \
	  PGD=$$(mktemp -d /tmp/voxelhub-pg.XXXXXX); \
	  RUNAS=""; if [ "$$(id -u)" = 0 ]; then chown nobody $$PGD; RUNAS="runuser -u nobody --"; fi; \
	  $$RUNAS $$PGBIN/initdb -D $$PGD/data -U voxelhub --auth=trust >/dev/null; \
	  $$RUNAS $$PGBIN/pg_ctl -D $$PGD/data -o "-k $$PGD -h 127.0.0.1 -p $$PGPORT" -l $$PGD/log -w start >/dev/null; \
	  trap "$$RUNAS $$PGBIN/pg_ctl -D $$PGD/data -m fast -w stop >/dev/null; rm -rf $$PGD" EXIT; \
	  VOXELHUB_TEST_POSTGRES_URL="postgresql+psycopg://voxelhub@127.0.0.1:$$PGPORT/postgres" \
	  HYPOTHESIS_PROFILE="$${HYPOTHESIS_PROFILE:-ci}" \
	  VOXELHUB_SHARED="$(SHARED)" $(BIN)/pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

# The multi-user workspace: hub + proxy + Dask Gateway over HTTPS on 127.0.0.1 (hub_config/hub.mk).
demo: hub-demo

# Single-user shape: the sample data in a local store and JupyterLab on 127.0.0.1, no root needed.
lab-demo: install
	$(BIN)/python -m voxelhub.demo --shared "$(SHARED)" --state "$(DEMO_STATE)"

bench: install hub-deps rtutils
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/viewer.py
	$(BIN)/python benchmarks/radiomics.py
	$(BIN)/python benchmarks/roi.py
	$(BIN)/python benchmarks/encryption.py
	$(BIN)/python benchmarks/backup.py

clean:
	rm -rf $(VENV) $(RTUTILS) .node .demo tests/artifacts $(OUTSIDE)

include hub_config/hub.mk
