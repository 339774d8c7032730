# Two entry points for a fresh machine: `make run` (the main job on its embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install example clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build from local disk first, so nothing below pulls the multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/lipcert inspect examples/digits_mlp.onnx

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

example: $(STAMP)
	$(BIN)/python examples/train_digits.py

clean:
	rm -rf $(VENV)
