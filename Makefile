# Two entry points for a fresh machine: `make run` (the service on its embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= lipcert-data

.PHONY: run test lint install browser example certify-example clean schema-docs

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build from local disk first, so nothing below pulls the multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The service with an embedded Redis, one worker, on http://127.0.0.1:8000 (Ctrl-C stops everything).
run: $(STAMP)
	$(BIN)/lipcert serve --data-dir $(DATA_DIR)

# Headless Chromium for the browser test (Debian packages); skipped quietly where apt is not available.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	     >/dev/null) || echo "chromium not installed: the browser test will be skipped"; }

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .

# The published copy of the report schema is the packaged one (tests/test_report.py keeps them equal).
schema-docs:
	cp certify/report/predicate.schema.json docs/report-schema.json

example: $(STAMP)
	$(BIN)/python examples/train_digits.py

# The pipeline in-process on the example model, writing a signed report.
certify-example: $(STAMP)
	mkdir -p $(DATA_DIR)
	test -f $(DATA_DIR)/example-key.pem || $(BIN)/lipcert keygen --private $(DATA_DIR)/example-key.pem \
	  --public $(DATA_DIR)/example-key.pub.pem
	$(BIN)/lipcert certify examples/digits_mlp.onnx --data examples/digits_test.npz --eps 0.05,0.1 --analysis units \
	  --key $(DATA_DIR)/example-key.pem -o $(DATA_DIR)/example-report.json

clean:
	rm -rf $(VENV)
