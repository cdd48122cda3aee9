# Two commands matter: `make run` and `make test`. Both set up .venv from the lock file.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.lock pyproject.toml | cksum | cut -d' ' -f1)
PORT  ?= 8000
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install run test test-unit test-integration test-system test-pgbouncer test-rabbitmq lint demo check-ledger services-stop lock exporter-install exporter-lock check-monitoring monitoring-live bench chaos

# requirements.lock: what the service runs on (the image installs only that);
# requirements-dev.lock: the same pins plus the test tools and the embedded servers.
# Both carry hashes: pip refuses a wheel that is not the one locked.
$(STAMP): requirements-dev.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## Start web, worker and beat in the foreground (embedded PostgreSQL/Redis unless DATABASE_URL/REDIS_URL are set).
run: install exporter-install
	mkdir -p .state
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v0
	@echo
	@echo "  stockflow API:  http://127.0.0.1:$(PORT)/api/   (docs: /api/docs, OpenAPI: /api/openapi.json)"
	@echo "  console:        http://127.0.0.1:$(PORT)/console/   (staff login: $(PY) manage.py createsuperuser)"
	@echo "  Flower:         http://127.0.0.1:$${FLOWER_PORT:-5555}/   Grafana (compose only): http://127.0.0.1:3000/"
	@echo "  get a token:    $(PY) manage.py create_api_token my-name   (last line printed)"
	@echo "  try it:         make demo"
	@echo
	exec honcho start --procfile Procfile --port $(PORT) web worker beat flower exporter  # release ran above (migrate)

## The whole test suite, tier by tier (what .ci/run calls).
test: test-unit test-integration test-system

## Pure logic: no PostgreSQL, no Redis, no subprocess (seconds).
test-unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

## Real PostgreSQL, Redis and Celery worker processes.
test-integration: install
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

## The integration tier again, every database connection through PgBouncer in transaction
## pooling mode (harness/pgbouncer.py, docs/pgbouncer.md): pytest, web and worker processes.
## pytest-django keeps the test database (--reuse-db): PgBouncer holds connections to it, so
## the harness drops it directly once PgBouncer has stopped.
PGBOUNCER_PORT ?= 0
PGBOUNCER_WORKDIR ?= .state/pgbouncer-test
test-pgbouncer: install
	DJANGO_SETTINGS_MODULE=tests.settings $(PY) -m harness.pgbouncer run --port $(PGBOUNCER_PORT) \
	  --workdir $(PGBOUNCER_WORKDIR) -- $(PY) -m pytest tests/integration --reuse-db $(PYTEST_ARGS)

## The job suite again on RabbitMQ (quorum queues, workers/rabbitmq.py) instead of Redis, in
## a vhost of its own (rabbitmqctl), deleted afterwards.
RABBITMQ_URL  ?= amqp://guest:guest@127.0.0.1:5672
RABBITMQ_USER ?= guest
JOB_SUITE := $(addprefix tests/integration/test_,delivery.py batches.py attempts.py in_flight.py \
  concurrency.py refunds.py fefo.py request_id.py jobs_api.py)
test-rabbitmq: install
	vhost=stockflow_jobs_$$$$; \
	rabbitmqctl add_vhost $$vhost >/dev/null && trap 'rabbitmqctl delete_vhost '$$vhost' >/dev/null' EXIT && \
	rabbitmqctl set_permissions -p $$vhost $(RABBITMQ_USER) '.*' '.*' '.*' >/dev/null && \
	STOCKFLOW_TEST_BROKER_URL=$(RABBITMQ_URL)/$$vhost $(PY) -m pytest $(JOB_SUITE) $(PYTEST_ARGS)

## Whole-stack runs: chaos and bench smoke, the browser, fuzzing.
test-system: install
	$(PY) -m pytest tests/system $(PYTEST_ARGS)

## ruff: the rule selection in pyproject.toml, and the formatter.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## Against a running `make run`: sell, pay, refund, and print each job.
demo: install
	$(PY) -m harness.demo --url http://127.0.0.1:$(PORT)

## Benchmark against stockflow's own embedded PostgreSQL/Redis; prints JSON + a table, writes bench-results/.
bench: install
	$(PY) -m bench $(BENCH_ARGS)

## Chaos run (kill -9 workers, Redis and PostgreSQL restarts) at full size; prints a JSON summary.
chaos: install
	$(PY) -m chaos $(CHAOS_ARGS)

check-ledger: install
	$(PY) manage.py check_ledger

## Stop the embedded PostgreSQL and Redis under .state/.
services-stop: install
	$(PY) -m harness.embedded stop

## Re-resolve the lock file from pyproject.toml (needs network).
lock:
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
	  --custom-compile-command "make lock" -o requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra local --extra test -c requirements.lock \
	  --generate-hashes --python-version 3.11 --custom-compile-command "make lock" -o requirements-dev.lock

## celery-exporter's own venv (.venv-exporter) from exporter/requirements.lock.
exporter-install:
	bin/celery-exporter --install

## Re-resolve exporter/requirements.lock (needs network).
exporter-lock: install
	$(PY) -m pip install --quiet uv && $(VENV)/bin/uv pip compile exporter/requirements.in -o exporter/requirements.lock --python-version 3.11

## Validate monitoring/ with promtool and amtool (installs them from Debian packages if missing).
check-monitoring:
	monitoring/install-tools.sh
	monitoring/check.sh

## The real Prometheus on stockflow's rules and dashboards against a live local stack under load.
monitoring-live: install exporter-install
	$(PY) monitoring/integration.py
