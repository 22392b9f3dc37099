# The two commands a newcomer needs: `make demo` and `make test`.
# Each works on a fresh machine with only python3 and make: it builds its own virtual environment
# from the committed lock file (requirements-dev.lock) and installs this package into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
UV_VERSION := 0.13.9

.PHONY: demo standalone test lint lock bench bench-client clean venv

venv: $(STAMP)

$(STAMP): requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements-dev.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# Airflow's UI, scheduler, triggerer and dag processor beside the emulator (for a person to watch; not CI).
standalone: $(STAMP)
	$(BIN)/python scripts/standalone.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

# Re-resolve the lock file after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --universal -o requirements-dev.lock

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_emulator.py

bench-client: $(STAMP)
	$(BIN)/python benchmarks/bench_client.py --size-mib 1024 --rounds 3 --files 500

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
