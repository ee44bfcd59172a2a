# Switchboard — `make run` starts the whole cluster, `make test` runs every test tier.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
REPLICAS ?= 3
# `make test`'s pytest workers: most of a cluster test's time is waiting, so two share two cores.
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install system-deps browser-deps test-e2e test-package run up down status test test-unit test-integration test-cluster lint fmt bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-17s %s\n", $$1, $$2}'

system-deps: ## apt-get install redis-server and haproxy when missing (as root)
	@scripts/install-system-deps.sh

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

install: system-deps $(VENV)/.installed ## system programs, the virtualenv, migrations, demo users
	@$(PY) manage.py migrate --noinput -v0
	@echo "Demo users (development passwords):"
	@$(PY) manage.py seed_demo

run: install ## install what is missing, then run Redis + 3 Daphne replicas + HAProxy on :8000
	@$(PY) manage.py cluster up --replicas $(REPLICAS) --port $(PORT)

up: install ## like run, but detached: returns once the cluster is up
	@$(PY) manage.py cluster up --detach --replicas $(REPLICAS) --port $(PORT)

status: ## what a detached cluster runs, and HAProxy's view of it
	@$(PY) manage.py cluster status

down: ## stop a detached cluster
	@$(PY) manage.py cluster down

browser-deps: ## system-deps plus Chromium (e2e), node + npm (npm package) and PostgreSQL (its test run), as root
	@scripts/install-system-deps.sh --browser --node --postgres

test: browser-deps $(VENV)/.installed ## install what is missing, then run every test tier
	@$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

test-unit: $(VENV)/.installed ## the unit tier only
	@$(PY) -m pytest -m unit

test-integration: $(VENV)/.installed ## the integration tier only (real redis-server)
	@$(PY) -m pytest -m integration

test-cluster: $(VENV)/.installed ## the cluster tier only (HAProxy + Daphne replicas + Redis)
	@$(PY) -m pytest -m cluster

test-package: $(VENV)/.installed ## the package tier only (wheels installed in a fresh virtualenv)
	@$(PY) -m pytest -m package

test-e2e: browser-deps $(VENV)/.installed ## the e2e tier only (headless Chromium on the real pages)
	@$(PY) -m pytest -m e2e

# Every check runs, so one run shows all that is wrong; the target fails if any did.
lint: $(VENV)/.installed ## format check, ruff, mypy (django-stubs) and import contracts, as CI runs them
	@status=0; \
	for check in "ruff format --check ." "ruff check ." "mypy" "lint-imports --no-logo"; do \
		echo "== $$check"; $(VENV)/bin/$$check || status=1; \
	done; \
	exit $$status

fmt: $(VENV)/.installed ## format the code and apply ruff's safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(VENV)/.installed ## benchmark 1000 clients over 3 replicas (W1-W4), with stock, raw-websockets and Socket.IO ratios
	@$(PY) manage.py bench --baseline stock --limit --peer socketio --inprocess

clean: ## remove the virtualenv and local state (database, logs)
	rm -rf $(VENV) var staticfiles
