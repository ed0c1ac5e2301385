# make setup : create .venv (if missing) and install the pinned stack (requirements.lock)
# make test  : setup, then the whole test suite
# make run   : setup, then `dvc repro` on the defaults of params.yaml (the main job), beside one Prefect server
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# No outbound calls besides the package index: telemetry and update checks off.
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup test run clean-venv

# The stamp is keyed by the lock: a changed lock reinstalls, an unchanged one does nothing.
$(BIN)/.lock-installed: requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -r requirements.lock
	cp requirements.lock $@

setup: $(BIN)/.lock-installed
	@# The project itself, editable; redone only if this venv points at another checkout.
	@$(BIN)/python -c "import medops, pathlib, sys; sys.exit(pathlib.Path(medops.__file__).resolve().parents[1] != pathlib.Path('src').resolve())" 2>/dev/null \
		|| $(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .

test: setup
	$(BIN)/python -m pytest

run: setup
	@# one Prefect server for all the training flows of the run (flows/shared_server.py)
	$(BIN)/python -m flows.shared_server dvc repro

clean-venv:
	rm -rf $(VENV)
