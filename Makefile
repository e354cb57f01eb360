# raftkv — every target makes the venv it needs, so each works on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test lint sim demo clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check raftkv harness tests

# Soak the deterministic simulator: RAFTKV_SIM_SEEDS=N make sim (default 10,000 seeds);
# replay one failing seed: RAFTKV_SIM_SEED=N make sim
sim: $(STAMP)
	RAFTKV_SIM_SEEDS=$${RAFTKV_SIM_SEEDS:-10000} $(PY) -m pytest -q tests/sim/test_random_seeds.py

# Until the harness lands (a real cluster: up, put/get, kill-leader), the demo runs
# simulated clusters through faults and prints what they survived.
demo: $(STAMP)
	@echo "raftkv demo: the real-process cluster arrives with the harness; simulating for now."
	RAFTKV_SIM_SEEDS=$${RAFTKV_SIM_SEEDS:-300} $(PY) -m pytest -q tests/sim

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
