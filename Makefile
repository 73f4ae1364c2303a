# VoxelHub: `make demo` and `make test` do everything on a fresh machine (Debian 12, as root or
# with sudo for the Debian packages).  The venv is built from Debian's /usr/bin/python3 because
# hub users must be able to execute it (the default Python here lives under /root, mode 0700).

PYTHON      ?= /usr/bin/python3
VENV        := .venv
BIN         := $(VENV)/bin
SHARED      ?= $(abspath ../shared)
DEMO_STATE  ?= $(abspath .demo)
APT_STAMP   := $(VENV)/.apt-installed
VENV_STAMP  := $(VENV)/.installed
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install test lint typecheck pytest demo lab-demo bench clean

install: $(VENV_STAMP)

# Debian packages the tests and the demo need: PostgreSQL (catalog tests), Chromium (browser
# tests; Playwright drives /usr/bin/chromium, never `playwright install`), Node.js + npm
# (configurable-http-proxy).  One `apt-get update`, and only when something is missing.
$(APT_STAMP):
	@mkdir -p $(VENV)
	@missing=""; \
	  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  [ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	  command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	  if [ -n "$$missing" ]; then \
	    $(SUDO) apt-get update && \
	    $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	  fi
	@touch $@

$(VENV_STAMP): pyproject.toml requirements/lock.txt $(APT_STAMP)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=26"
	$(BIN)/python -m pip install --quiet -c requirements/lock.txt -e ".[test,dev,hub]"
	@touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# PostgreSQL for the catalog tests: a throwaway cluster on loopback, owned by an unprivileged
# user when run as root (postgres refuses to run as root), stopped after the tests.
pytest: install hub-deps
	@set -e; PGBIN=$$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1); \
	  PGPORT=$$($(BIN)/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'); \
	  PGD=$$(mktemp -d /tmp/voxelhub-pg.XXXXXX); \
	  RUNAS=""; if [ "$$(id -u)" = 0 ]; then chown nobody $$PGD; RUNAS="runuser -u nobody --"; fi; \
	  $$RUNAS $$PGBIN/initdb -D $$PGD/data -U voxelhub --auth=trust >/dev/null; \
	  $$RUNAS $$PGBIN/pg_ctl -D $$PGD/data -o "-k $$PGD -h 127.0.0.1 -p $$PGPORT" -l $$PGD/log -w start >/dev/null; \
	  trap "$$RUNAS $$PGBIN/pg_ctl -D $$PGD/data -m fast -w stop >/dev/null; rm -rf $$PGD" EXIT; \
	  VOXELHUB_TEST_POSTGRES_URL="postgresql+psycopg://voxelhub@127.0.0.1:$$PGPORT/postgres" \
	  VOXELHUB_SHARED="$(SHARED)" $(BIN)/pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

# The multi-user workspace: hub + proxy + Dask Gateway over HTTPS on 127.0.0.1 (hub_config/hub.mk).
demo: hub-demo

# Single-user shape: the sample data in a local store and JupyterLab on 127.0.0.1, no root needed.
lab-demo: install
	$(BIN)/python -m voxelhub.demo --shared "$(SHARED)" --state "$(DEMO_STATE)"

bench: install hub-deps
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/viewer.py
	$(BIN)/python benchmarks/radiomics.py

clean:
	rm -rf $(VENV) .node .demo tests/artifacts

include hub_config/hub.mk
