# The two commands a new user needs: `make run` and `make test`. Everything else is for developers.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8

.PHONY: install run test test-tools check format compose-check migrate loadtest bench bench-drain bench-fairness bench-app bench-worker-start bench-redis bench-jobs clean

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"

# .venv from the lock file (uv.lock); re-run after pulling a changed lock. Byte-compiled, as in the image: where
# PYTHONDONTWRITEBYTECODE is set no .pyc is ever cached, and every process would compile its imports afresh
# (a worker took 1.8 s instead of 0.6 s to store its first row: make bench-worker-start).
$(VENV)/.installed: uv.lock pyproject.toml | $(BIN)/uv
	UV_PROJECT_ENVIRONMENT=$(VENV) $(BIN)/uv sync --frozen --compile-bytecode --python $(BIN)/python
	touch $@

install: $(VENV)/.installed

run: install  ## API + one worker (+ embedded Postgres/Redis when DATABASE_URL/REDIS_URL are unset)
	$(BIN)/python -m devstack.launcher

# The core, tenancy and backpressure modules again, unchanged, on a local Redis Cluster (3 primaries; cluster client,
# hash-tagged keys): tests/conftest.py's TEST_REDIS_CLUSTER. tests/test_cluster.py covers shards, failover and WAIT.
CLUSTER_TESTS := tests/api/test_notifications.py tests/api/test_templates.py tests/api/test_idempotency.py \
	tests/api/test_rate_limits.py tests/api/test_auth.py tests/api/test_notify_auth.py tests/api/test_notify_v2.py \
	tests/reliability/test_backpressure.py

# Tools the suite runs besides Python: Debian's faketime (a real worker and the CLI run with their clock moved).
test-tools:
	command -v faketime >/dev/null || (apt-get update -qq && apt-get install -y -qq faketime)

test: install test-tools  ## the whole suite, against real servers (embedded unless TEST_DATABASE_URL/TEST_REDIS_URL), then the core again on a Redis Cluster
	$(BIN)/pytest
	TEST_REDIS_CLUSTER=1 $(BIN)/pytest -q $(CLUSTER_TESTS)

check: install  ## style and types
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy api worker shared devstack deploy loadtest
	$(BIN)/pydocstyle api worker shared devstack deploy loadtest

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

loadtest: install  ## locust, the brief's settings (60 users, 10/s, 30 s), against a running `make run` (or PORT, API_URL); figures in .data/loadtest/ (ARGS=--record: loadtest/results/)
	$(BIN)/python -m loadtest.run_locust $(ARGS)

bench: install  ## the service vs the naive and direct baselines, its sustained rates, again with 2 ms added to Postgres, then the app on a local Redis Cluster (WAIT 0 and 1) beside a single Redis
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m loadtest.bench $(ARGS)
	$(BIN)/python -m loadtest.bench --pg-delay-ms 2 --label pg-delay-2ms --skip-extras --skip-sustained $(ARGS)
	$(BIN)/python -m loadtest.bench_app --cluster --label bench-cluster

bench-drain: install  ## one worker draining a 200k backlog vs a raw COPY of the same rows
	$(BIN)/python -m loadtest.bench_drain --notifications 200000 $(ARGS)

bench-fairness: install  ## a service flooding past its rate limit beside a calm one: the calm one's latency
	$(BIN)/python -m loadtest.bench_fairness $(ARGS)

bench-app: install  ## CPU per request of the app alone, in-process (steadier than make bench for comparing versions)
	$(BIN)/python -m loadtest.bench_app $(ARGS)

bench-worker-start: install  ## seconds from starting `arq worker.main.WorkerSettings` to its first stored row
	$(BIN)/python -m loadtest.bench_worker_start $(ARGS)

bench-jobs: install  ## a 1,000,000-row CSV job streamed to POST /notifications/v1/jobs beside the same rows as /multiple(1000): rates, drain, API memory
	$(BIN)/python -m loadtest.bench_jobs_http $(ARGS)

bench-redis: install  ## one Redis process: the group-commit script from redis-py, AOF always/everysec/off, + redis-benchmark
	command -v redis-benchmark >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-tools)
	$(BIN)/python -m loadtest.bench_redis $(ARGS)

compose-check: install  ## docker-compose.yml for real (needs Docker and minutes): up, a key, a POST stored, 3 workers, one killed under load, the cluster profile
	$(BIN)/python -m deploy.compose_check $(ARGS)

migrate: install
	$(BIN)/alembic upgrade head

clean:
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache
