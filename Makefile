# The two set-up commands of the README.
#   make run   create .venv, install, segment examples/ with the default model into outputs/
#   make test  create .venv if needed, run the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/vocabseg: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: run test
run: $(BIN)/vocabseg
	$(BIN)/vocabseg segment examples/ --out outputs/

test: $(BIN)/vocabseg
	$(BIN)/python -m pytest tests
