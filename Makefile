# The two commands a new user needs: `make run` and `make test`. Everything else is for developers.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8

.PHONY: install run test check format worker api migrate loadtest clean

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"

# .venv from the lock file (uv.lock); re-run after pulling a changed lock.
$(VENV)/.installed: uv.lock pyproject.toml | $(BIN)/uv
	UV_PROJECT_ENVIRONMENT=$(VENV) $(BIN)/uv sync --frozen --python $(BIN)/python
	touch $@

install: $(VENV)/.installed

run: install  ## API + one worker (+ embedded Postgres/Redis when DATABASE_URL/REDIS_URL are unset)
	$(BIN)/python -m deploy.local

test: install  ## the whole suite, against real servers (embedded unless TEST_DATABASE_URL/TEST_REDIS_URL)
	$(BIN)/pytest

check: install  ## style and types
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy api worker shared deploy loadtest
	$(BIN)/pydocstyle api worker shared deploy loadtest

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

migrate: install
	$(BIN)/alembic upgrade head

clean:
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache
