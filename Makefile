# The two set-up commands of the README.
#   make run   create .venv, install, segment examples/ with the default model into outputs/
#   make test  create .venv if needed, run the whole test suite (make test-quick: without the slow tests)
#              (the demo's browser test drives Debian's Chromium; installed here when missing, as root)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHROMIUM := /usr/bin/chromium

$(BIN)/vocabseg: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,demo]'
	touch $@

$(CHROMIUM):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium > /dev/null

.PHONY: run test test-quick
run: $(BIN)/vocabseg
	$(BIN)/vocabseg segment examples/ --out outputs/

test: $(BIN)/vocabseg $(CHROMIUM)
	$(BIN)/python -m pytest tests

# the developers' quick loop: everything but the slow, browser and torchrun tests
test-quick: $(BIN)/vocabseg
	$(BIN)/python -m pytest tests -m "not slow"
