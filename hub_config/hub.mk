# hub_config/hub.mk -- Make rules of the multi-user hub (issue 5); included by the Makefile.
# Uses BIN, VENV, SHARED, DEMO_STATE and SUDO from the Makefile.
#
#   make hub-deps        configurable-http-proxy (npm, into .node/); Python packages come with install
#   make hub-demo        ingest ../shared/data/dicom, start hub + proxy + gateway on
#                        https://127.0.0.1:$(HUB_DEMO_PORT), print URL and generated credentials;
#                        Ctrl-C stops everything
#   make hub-demo-clean  remove the demo's unix accounts and state
#   make hub-test        only the hub tests (they also run in `make test`)
#   make hub-bench       benchmarks/hub.py (root): hub start, spawn, Gateway cluster, 20 spawns at
#                        once -> benchmarks/results/hub.json

VENV_STAMP    ?= $(VENV)/.installed
NODE_PREFIX   := .node
CHP           := $(NODE_PREFIX)/node_modules/.bin/configurable-http-proxy
HUB_STATE     ?= $(DEMO_STATE)/hub-demo
HUB_DEMO_PORT ?= 8443

.PHONY: hub-deps hub-demo hub-demo-clean hub-test hub-bench

# the hub's Python packages are the `hub` extra of pyproject.toml, installed by `make install`
hub-deps: $(VENV_STAMP) $(CHP)

# configurable-http-proxy, exactly as locked in hub_config/node/package-lock.json
$(CHP): hub_config/node/package.json hub_config/node/package-lock.json
	@command -v npm >/dev/null || { $(SUDO) apt-get update && \
	  $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm; }
	@mkdir -p $(NODE_PREFIX)
	cp hub_config/node/package.json hub_config/node/package-lock.json $(NODE_PREFIX)/
	npm ci --prefix $(NODE_PREFIX) --no-audit --no-fund --loglevel=error
	@touch $@

hub-demo: hub-deps
	PYTHONPATH=extensions $(BIN)/python -m voxelhub_hub.demo --shared "$(SHARED)" \
	  --state "$(HUB_STATE)" --port $(HUB_DEMO_PORT)

hub-demo-clean:
	PYTHONPATH=extensions $(BIN)/python -m voxelhub_hub.demo --shared "$(SHARED)" \
	  --state "$(HUB_STATE)" --clean

hub-test: hub-deps
	VOXELHUB_SHARED="$(SHARED)" $(BIN)/pytest -q tests/hub $(PYTEST_ARGS)

hub-bench: hub-deps
	$(BIN)/python benchmarks/hub.py
