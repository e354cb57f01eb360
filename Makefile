# raftkv — every target makes the venv it needs, so each works on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test lint api-docs sim sim-replica fuzz demo up down status bench bench-compare bench-coord chaos clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[server,test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check raftkv harness tests tools

# docs/API.md from the public API's docstrings (tools/api_docs.py); a test fails when it
# is out of date, so run this after changing a docstring or a signature of raftkv.Client
api-docs: $(STAMP)
	$(PY) tools/api_docs.py

# Soak both deterministic simulators, the cores' and the real replicas':
# RAFTKV_SIM_SEEDS=N make sim (default 10,000 seeds each); replay one failing seed:
# RAFTKV_SIM_SEED=N make sim (or make sim-replica, for the replica simulator alone)
sim: $(STAMP)
	RAFTKV_SIM_SEEDS=$${RAFTKV_SIM_SEEDS:-10000} $(PY) -m pytest -q tests/sim/test_random_seeds.py \
		tests/sim/test_replica_seeds.py

sim-replica: $(STAMP)
	RAFTKV_SIM_SEEDS=$${RAFTKV_SIM_SEEDS:-10000} $(PY) -m pytest -q tests/sim/test_replica_seeds.py

# Longer Hypothesis runs of the fuzz tests (wire decoders, Raft.step under a buggy peer):
# RAFTKV_FUZZ_EXAMPLES=N make fuzz (default 5,000 examples per test); RAFTKV_FUZZ_SEED=N
# explores other examples and replays a failure found with that seed (tests/fuzz.py)
fuzz: $(STAMP)
	RAFTKV_FUZZ_EXAMPLES=$${RAFTKV_FUZZ_EXAMPLES:-5000} $(PY) -m pytest -q \
		tests/unit/test_wire_fuzz.py tests/unit/test_core_fuzz.py

# A fresh machine to a running cluster: venv, install, up, a few writes and reads,
# kill the leader, show the data survived under the new leader. Leaves the cluster up
# (make down stops it).
demo: $(STAMP)
	bin/raftkv up
	bin/raftkv put greeting hello
	bin/raftkv put user:1 alice
	bin/raftkv cas user:1 alice bob
	bin/raftkv get greeting
	bin/raftkv scan user:
	bin/raftkv status
	bin/raftkv kill-leader
	bin/raftkv get greeting
	bin/raftkv get user:1
	bin/raftkv restart $$(bin/raftkv status --json | $(PY) -c 'import json,sys; print(next(n["id"] for n in json.load(sys.stdin)["nodes"] if not n["alive"]))')
	bin/raftkv status
	@echo "the cluster is still up: try bin/raftkv --help; stop it with: make down"

up: $(STAMP)
	bin/raftkv up

down: $(STAMP)
	bin/raftkv down

status: $(STAMP)
	bin/raftkv status

# The figures the README quotes: puts at 1 and 64 in flight, linearizable gets at 64,
# and 10 leader kills (each run starts its own cluster in a temp dir).
bench: $(STAMP)
	bin/raftkv bench --clients 1
	bin/raftkv bench --clients 64
	bin/raftkv bench --clients 64 --mix get
	bin/raftkv bench --failover

# raftkv beside PySyncObj (installed here as the optional `compare` extra) and, when
# `etcd` is on PATH, etcd (apt-get install etcd-server golang-go golang-etcd-server-dev:
# its load generator is Go), taking turns, medians of 3 rounds each.
bench-compare: $(STAMP)
	$(PY) -m pip install --quiet -e '.[compare]'
	$(PY) -m harness.bench_compare

# Lock latency and watch fan-out to 100 watchers, raftkv against etcd, alternating rounds
# (harness/coord_bench.py; needs etcd-server, golang-go, golang-etcd-server-dev)
bench-coord: $(STAMP)
	$(PY) -m harness.coord_bench --rounds $${ROUNDS:-3}

# Long chaos runs: the default nemeses at once (all but membership), 10 minutes
# (RAFTKV_CHAOS_TIME=seconds to change)
chaos: $(STAMP)
	bin/raftkv chaos --nodes 5 --clients 8 --time $${RAFTKV_CHAOS_TIME:-600}

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
