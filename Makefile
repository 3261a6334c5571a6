# sqlite-replicated. `make` builds target/release/libreplicated.so; `make test` runs every test;
# `make demo` shows it working; `make bench` measures it against plain SQLite.
# One cargo profile (release) serves the library, the unit tests and everything that loads the .so.
CARGO ?= cargo
PYTHON ?= python3
LIB := target/release/libreplicated.so

.PHONY: all build setup test unit lint integration nemesis soak demo bench fuzz clean

all: build

build:
	$(CARGO) build --release

setup:
	@bash scripts/setup.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings

unit:
	$(CARGO) test --release

# Fast suites first, crash tests and the nemesis (>= 50 fault cycles on 3 and 5 nodes) last.
integration: build
	cd tests && $(PYTHON) -m pytest -q -p no:cacheprovider test_config.py test_hosts.py test_sql_files.py test_crash.py test_cluster.py test_nemesis.py

# The 10-minute nemesis schedule: 6 minutes on 3 nodes, 4 on 5 nodes (random seeds; NEMESIS_SEED=n to replay).
nemesis: setup build
	$(PYTHON) tests/nemesis/run.py --nodes 3 --duration 360
	$(PYTHON) tests/nemesis/run.py --nodes 5 --clients 5 --snapshot-every 500 --duration 240

# make soak DURATION=3600: one long nemesis run (seconds; NODES=3 or 5), with snapshots and log
# compaction on so that the logs stay bounded however long it runs.
DURATION ?= 3600
NODES ?= 5
soak: setup build
	$(PYTHON) tests/nemesis/run.py --nodes $(NODES) --clients $(NODES) --snapshot-every 1000 --duration $(DURATION)

# Slow suites last: the nemesis runs at the end of `integration`, then a bounded fuzz run.
TEST_FUZZ_SECONDS ?= 30
test: setup build unit integration
	FUZZ_SECONDS=$(TEST_FUZZ_SECONDS) bash scripts/fuzz.sh
	$(MAKE) lint

demo: setup build
	/usr/bin/python3 scripts/demo.py

# Bounded fuzzing: builds the fuzz targets once, runs each FUZZ_SECONDS (`make test` runs 30 s each).
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

bench: setup build
	/usr/bin/python3 benches/bench.py
	/usr/bin/python3 benches/cluster_bench.py

clean:
	$(CARGO) clean
