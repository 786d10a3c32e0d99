# Lakestack developer entry points. A fresh machine needs only Python 3.11, pip and make:
# the first target that needs uv installs it into .tools/ (a private venv), then uv installs the rest.

PYTHON ?= python3
TOOLS := .tools
UV := $(TOOLS)/bin/uv
RUN := $(UV) run --frozen

.PHONY: help bootstrap sync up down status test test-fast lint fmt typecheck protos protos-check buf-lint compose-check bench clean

help:
	@echo "make up            install everything and start the whole stack (Ctrl-C stops it)"
	@echo "make test          run the test suite"
	@echo "make lint          ruff + proto lint"
	@echo "make protos        regenerate Python code from protos/"
	@echo "make protos-check  fail if generated code is stale"
	@echo "make compose-check validate deploy/compose.yaml"
	@echo "make bench         run the benchmarks under bench/"

# uv goes into a private venv; where the venv module is missing (Debian without python3-venv),
# pip installs it into .tools/ directly. Either way the binary ends up at .tools/bin/uv.
$(UV):
	( $(PYTHON) -m venv $(TOOLS) && $(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check "uv>=0.5" ) \
	  || $(PYTHON) -m pip install --quiet --disable-pip-version-check --upgrade --target $(TOOLS) "uv>=0.5"
	@test -x $(UV) || { echo "could not install uv into $(TOOLS)" >&2; exit 1; }

bootstrap: $(UV)

sync: $(UV)
	$(UV) sync --frozen

up: sync
	$(RUN) lakestack up

down: $(UV)
	$(RUN) lakestack down

status: $(UV)
	$(RUN) lakestack status

test: sync
	$(RUN) pytest -q

lint: sync
	$(RUN) ruff check .
	$(RUN) ruff format --check .

fmt: sync
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

typecheck: sync
	$(RUN) mypy libs/common/src cli/src services/*/src

protos: sync
	$(RUN) python scripts/gen_protos.py

protos-check: sync
	$(RUN) python scripts/gen_protos.py --check

buf-lint:
	cd protos && npx --yes @bufbuild/buf@1 lint

compose-check:
	docker-compose -f deploy/compose.yaml config --quiet

bench: sync
	$(RUN) python bench/run.py $(ARGS)

clean:
	rm -rf $(TOOLS) .venv data

# ---- end-to-end tests (docs/e2e.md) ------------------------------------------------------------
# `make e2e`: the platform flow against a stack the tests start themselves (the `lakestack up`
# launcher on free ports). `make e2e-compose`: the same tests against deploy/compose.yaml: build
# the image, start the stack, wait until every service is SERVING, run, always tear down (-v).
COMPOSE ?= docker-compose
E2E_COMPOSE_FILES ?= deploy/compose.yaml
E2E_COMPOSE := $(COMPOSE) $(addprefix -f ,$(E2E_COMPOSE_FILES))
E2E_PORTS := 50061 50062 50063 50064 50065
E2E_ADDRESSES := lakehouse=127.0.0.1:50061,teckel_jobs=127.0.0.1:50062,das=127.0.0.1:50063,vector_core=127.0.0.1:50064,streams=127.0.0.1:50065
empty :=
space := $(empty) $(empty)

.PHONY: e2e e2e-compose

e2e: sync
	$(RUN) pytest tests/e2e -v $(ARGS)

e2e-compose: sync
	@status=0; \
	$(E2E_COMPOSE) build || status=$$?; \
	if [ $$status -eq 0 ]; then $(E2E_COMPOSE) up -d || status=$$?; fi; \
	if [ $$status -eq 0 ]; then \
	  for port in $(E2E_PORTS); do \
	    tries=0; \
	    until $(RUN) python -m lakestack_common.healthcheck 127.0.0.1:$$port >/dev/null 2>&1; do \
	      tries=$$((tries + 1)); \
	      if [ $$tries -ge 90 ]; then echo "127.0.0.1:$$port is not SERVING" >&2; status=1; break; fi; \
	      sleep 2; \
	    done; \
	  done; \
	  $(E2E_COMPOSE) ps; \
	fi; \
	if [ $$status -eq 0 ]; then \
	  LAKESTACK_E2E_EXTERNAL=1 LAKESTACK_E2E_ADDRESSES=$(E2E_ADDRESSES) \
	  LAKESTACK_E2E_COMPOSE_FILE=$(subst $(space),:,$(strip $(E2E_COMPOSE_FILES))) LAKESTACK_E2E_COMPOSE_CMD="$(COMPOSE)" \
	    $(RUN) pytest tests/e2e -v $(ARGS) || status=$$?; \
	fi; \
	if [ $$status -ne 0 ]; then $(E2E_COMPOSE) logs --tail=40 || true; fi; \
	$(E2E_COMPOSE) down -v || true; \
	exit $$status
