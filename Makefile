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
