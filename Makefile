# sqlite-replicated. `make` builds target/release/libreplicated.so; `make test` runs every test;
# `make demo` shows it working; `make bench` measures it against plain SQLite.
# One cargo profile (release) serves the library, the unit tests and everything that loads the .so.
CARGO ?= cargo
PYTHON ?= python3
LIB := target/release/libreplicated.so

.PHONY: all build setup test unit lint integration demo bench clean

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

# Fast suites first, crash tests last.
integration: build
	cd tests && $(PYTHON) -m pytest -q -p no:cacheprovider test_config.py test_hosts.py test_sql_files.py test_crash.py test_cluster.py

test: setup build unit integration lint

demo: setup build
	/usr/bin/python3 scripts/demo.py

bench: setup build
	/usr/bin/python3 benches/bench.py
	/usr/bin/python3 benches/cluster_bench.py

clean:
	$(CARGO) clean
