# The two commands a newcomer needs: `make demo` and `make test`.
# Each works on a fresh machine with only python3 and make: it builds its own virtual environment
# from the committed lock file (requirements-dev.lock) and installs this package into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
UV_VERSION := 0.13.9

.PHONY: demo standalone test test-distributed lint lock bench bench-client bench-download bench-triggerer clean venv

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

# XNAT_URL is cleared for pytest so that the contract tests use their in-process emulator even where a lab has
# exported its XNAT's variables; they then run once more against an emulator started as a separate process,
# through those variables, as `make test-live` runs them against a real XNAT.
# The tests wait on HTTP, emulated XNAT clocks and Airflow far more than they compute: three pytest workers
# (pytest-xdist; each its own Airflow home and emulators) take the suite from about 9 minutes to about 4 on
# 2 cores. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3
test: $(STAMP)
	$(BIN)/ruff check .
	env -u XNAT_URL $(BIN)/python -m pytest -n $(TEST_WORKERS)
	$(MAKE) --no-print-directory test-contract-external

# The example DAGs under CeleryExecutor as docker/docker-compose.yaml deploys them: private PostgreSQL and Redis
# (installed from Debian's packages when missing and run as root), the emulator, and Airflow's API server,
# scheduler, DAG processor, triggerer and two Celery workers as separate processes, checked through Airflow's
# REST API (tests/distributed/run.py says what). About 3 minutes; everything it starts is stopped by PID.
test-distributed: $(STAMP)
	$(BIN)/python tests/distributed/run.py

lint: $(STAMP)
	$(BIN)/ruff check .

# Re-resolve the lock file after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra testing --extra examples --extra celery \
		--python-version 3.11 --universal -o requirements-dev.lock

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_emulator.py

bench-client: $(STAMP)
	$(BIN)/python benchmarks/bench_client.py --size-mib 1024 --rounds 3 --files 500

# A verified 1 GiB download against MD5 in memory and curl -o, alternating, nothing else between them.
bench-download: $(STAMP)
	$(BIN)/python benchmarks/bench_download_md5.py --size-mib 1024 --rounds 6

# N deferred prearchive and experiment sensors in one event loop, as the triggerer runs them (BENCHMARKS.md).
bench-triggerer: $(STAMP)
	PYTHONPATH=$(CURDIR) $(BIN)/python benchmarks/bench_triggerer.py --n 10 100 1000 --interval 2 --rounds 5
	PYTHONPATH=$(CURDIR) $(BIN)/python benchmarks/bench_triggerer.py --n 1000 --interval 30 --rounds 3

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info

# The contract suite (tests/contract) against the XNAT described by XNAT_URL, XNAT_USER, XNAT_PASSWORD and
# XNAT_PROJECT (a scratch project that user owns): run it against a lab's test XNAT before upgrading the
# provider. See README, "Testing against your own XNAT". Refuses to run without XNAT_URL, so that it never
# falls back to the emulator and reports a pass that says nothing about the lab's server.
.PHONY: test-live test-contract-external
test-live: $(STAMP)
	@if [ -z "$$XNAT_URL" ]; then \
		echo "make test-live: XNAT_URL is not set. Set XNAT_URL, XNAT_USER, XNAT_PASSWORD and XNAT_PROJECT" \
		     "(a scratch project the user owns) to run the contract tests against that XNAT;" \
		     "see README, 'Testing against your own XNAT'. Without a real XNAT: make test-contract-external." >&2; \
		exit 2; \
	fi
	$(BIN)/python -m pytest tests/contract

# test-live against the emulator started as a separate process, through the same XNAT_* variables (CI has no
# real XNAT). tests/contract/run_external.py starts it, waits for it to answer and stops it however the run ends.
test-contract-external: $(STAMP)
	$(BIN)/python tests/contract/run_external.py -- $(MAKE) --no-print-directory test-live
