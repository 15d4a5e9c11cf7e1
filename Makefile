# Two entry points for a fresh machine with only python3: `make run` and `make test`.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

run: $(STAMP)   ## the monitor on its defaults: SQLite in the user data dir, status.openai.com, messages to the log
	$(BIN)/monitor run

test: $(STAMP)  ## the whole suite (starts its own loopback servers)
	$(BIN)/pytest -n 2 -q

bench: $(STAMP) ## benchmarks/ against their baselines, prints a table and JSON
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV)
