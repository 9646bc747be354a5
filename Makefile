# Everything a fresh machine needs, from scratch: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export JAX_PLATFORMS ?= cpu

.PHONY: setup system-deps lint test demo example bench bench-cluster bench-dask clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
	  else echo "error: $(PYTHON) cannot make virtual environments: install python3-venv" >&2; exit 1; fi; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) system-deps

# h5dump (Debian's hdf5-tools, HDF5 1.10) and ncdump (netcdf-bin) check that our files
# open in those tools.
system-deps:
	@command -v h5dump >/dev/null 2>&1 && command -v ncdump >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hdf5-tools netcdf-bin >/dev/null; \
	  else echo "note: install hdf5-tools and netcdf-bin (h5dump, ncdump) to run the file compatibility tests"; fi; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup lint
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/trajstore demo

# The seed's writer (kups 1.0.8, Python 3.12) runs beside ours: its venv is made once
# under .venv-seed/; without Python 3.12 its column is left out, with a note.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# 8 writers against 1, 2 and 4 store processes (a few minutes more): BENCHMARKS.md.
bench-cluster: $(STAMP)
	$(BIN)/python -m benchmarks.cluster

# A whole remote run read through dask (threads, then a LocalCluster) against the remote reader.
bench-dask: $(STAMP)
	$(BIN)/python -m benchmarks.dask_read

example: $(STAMP)
	$(BIN)/python examples/local_quickstart.py

clean:
	rm -rf $(VENV) .venv-seed .pytest_cache .mypy_cache .ruff_cache .hypothesis
