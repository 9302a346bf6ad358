# BTARD Swarm: the two commands are `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-e2e install site lint clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch goes first, pinned, so no dependency pulls a CUDA build. One checkout runs everything: the worker
# and the site extras on top of the wire base (pyproject.toml), and the test tools.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[worker,site,dev]'
	# EPFL's ByzFL, for the baselines' cross-check only; without its heavy dependencies (the test loads the
	# submodules it compares against)
	$(PIP) install --no-deps byzfl==0.0.11
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m worker_client.demo $(DEMO_ARGS)

site: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) -m daphne -b 127.0.0.1 -p 8000 btard_site.asgi:application

test: $(STAMP)
	@$(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest ran no tests: treating as failure"; exit 1; fi; exit $$status

# Faults across hosts (tests/e2e): workers in network namespaces, needs root, PostgreSQL and Redis
# (DATABASE_URL / REDIS_URL as for `make test`); left out of `make test`, run by CI after it (.ci/run)
# (about 4-11 minutes on a 2-core machine).
test-e2e: $(STAMP)
	@$(PY) -m pytest -m e2e tests/e2e $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest ran no tests: treating as failure"; exit 1; fi; exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check btard_wire platform worker_client tests

clean:
	rm -rf var/ .pytest_cache
