# The two commands that do everything on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: run test bench chaos compose-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

## run: set up, then run the demo (Redis, sandbox, worker, beat, a few battles live)
run: $(VENV)/.installed
	bash scripts/ensure-redis
	$(VENV)/bin/battle-scorer demo

## test: set up, then run the whole test suite
test: $(VENV)/.installed
	bash scripts/ensure-redis
	$(PY) -m pytest -q -ra

bench: $(VENV)/.installed
	$(PY) -m bench.run

compose-check:
	docker-compose -f docker-compose.yml config -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
