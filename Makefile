# Two commands for a fresh Debian/Ubuntu machine with Python >= 3.11:
#   make run   train the default experiment (simulations/quickstart.toml) and print where results are
#   make test  lint, types, unit and integration tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A CPU build of torch: a bare "torch" requirement makes pip fetch a multi-GB CUDA build.
# pip's own configuration decides where it comes from: where your index lacks CPU builds,
# set PIP_EXTRA_INDEX_URL (or pip.conf) to an index that has them. Without one, the plain
# release of the same version is installed.
TORCH  ?= torch==2.13.0+cpu
OUT    ?= results/quickstart
# pytest-xdist workers (0: none). Each worker takes whole files; the files that start a
# SuperLink with SuperNodes run one after another on one worker, those that start Ray on
# one worker (tests/conftest.py, CHAIN_OF and its scheduler).
TEST_JOBS ?= 2
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1

.PHONY: run test lint typecheck unit integration clean mosquitto

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)" 2>/dev/null \
	  || $(BIN)/pip install --quiet "$(firstword $(subst +, ,$(TORCH)))"
	$(BIN)/pip install --quiet -e ".[train]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed-run
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

run: $(VENV)/.installed-run
	$(BIN)/edgeai simulate simulations/quickstart.toml --out $(OUT)

# The integration tests run a real Mosquitto broker (and mosquitto_sub / mosquitto_passwd).
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] \
	  || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; } \
	  || { echo "install mosquitto and mosquitto-clients (e.g. sudo apt-get install mosquitto mosquitto-clients)"; exit 1; }
	@command -v mosquitto_sub >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq mosquitto-clients >/dev/null; } \
	  || { echo "install mosquitto-clients (mosquitto_sub)"; exit 1; }

test: $(VENV)/.installed-dev mosquitto
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -ra -n $(TEST_JOBS)

clean:
	rm -rf $(VENV) results .mypy_cache .pytest_cache .ruff_cache
