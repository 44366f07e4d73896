# The two commands of the README: `make serve` and `make test`.
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: install serve test bench

install:
	bash scripts/install.sh

serve: install
	HF_HUB_OFFLINE=1 .venv/bin/transferrank serve --host $(HOST) --port $(PORT)

test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python -m pytest -q $(PYTEST_ARGS)

bench: install
	.venv/bin/python -m bench.estimators
