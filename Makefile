# The commands of the README: `make serve`, `make lint` (ruff + mypy) and `make test`.
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: install serve lint test bench

install:
	bash scripts/install.sh

serve: install
	HF_HUB_OFFLINE=1 .venv/bin/transferrank serve --host $(HOST) --port $(PORT)

lint: install
	.venv/bin/ruff check .
	.venv/bin/mypy

test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python -m pytest -q $(PYTEST_ARGS)

bench: install
	.venv/bin/python -m bench.estimators
