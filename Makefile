# Data Out for Airflow. `make demo` and `make test` do all the set-up they need on a fresh machine.
SHELL := /bin/bash
PY ?= python3.11
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
DEMO_DIR := $(CURDIR)/.demo

# A project-local Airflow: its own home, metadata DB (SQLite), and this repo's dags/ and plugins/.
export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__LOGGING__LOGGING_LEVEL ?= WARNING
export PYTHONPATH := $(CURDIR)/plugins:$(CURDIR)/include

# The embedded default: SQLite files for the state database and the sample warehouse.
# Point these at Postgres (conn_type "postgres") for production; see docs/audiences.md "Connections".
export AIRFLOW_CONN_DATA_OUT_STATE ?= {"conn_type": "sqlite", "host": "$(DEMO_DIR)/state.db"}
export AIRFLOW_CONN_DATA_OUT_WAREHOUSE ?= {"conn_type": "sqlite", "host": "$(DEMO_DIR)/warehouse.db"}

.PHONY: system-deps install dialects airflow-db airflow-ui chromium demo demo-churn airflow airflow-stop test lint history bench bench-growth bench-mariadb bench-customerio bench-ui clean

# Debian packages the Python install needs, installed only where missing: mysqlclient (the MySQL
# provider's driver, for the warehouse tests) compiles against the MariaDB client library.
system-deps:
	@pkg-config --exists libmariadb 2>/dev/null || { \
	  [ "$$(id -u)" = 0 ] || { echo "as root, or install libmariadb-dev pkg-config gcc yourself"; exit 1; }; \
	  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libmariadb-dev pkg-config gcc >/dev/null; }

$(VENV)/.installed: requirements.txt requirements-test.txt constraints.txt pyproject.toml | system-deps
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-test.txt -c constraints.txt
	$(BIN)/pip install --quiet --no-deps -e .  # the provider entry point: Data Out's connection types
	touch $@

install: $(VENV)/.installed

# A side virtualenv with the SQLAlchemy dialects that cannot be installed beside the test oracles
# (snowflake-sqlalchemy needs protobuf < 7, google-ads needs 7): the compile-only test runs a script under
# its python. Built from its own lock file only; the main venv is never touched. See docs/development.md.
DIALECTS_VENV := $(CURDIR)/.venv-dialects
$(DIALECTS_VENV)/.installed: requirements-dialects.txt
	rm -rf $(DIALECTS_VENV)
	$(PY) -m venv $(DIALECTS_VENV)
	$(DIALECTS_VENV)/bin/pip install --quiet --disable-pip-version-check --no-compile -r requirements-dialects.txt
	touch $@

dialects: $(DIALECTS_VENV)/.installed

$(AIRFLOW_HOME)/.migrated: $(VENV)/.installed
	mkdir -p $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate > $(AIRFLOW_HOME)/migrate.log 2>&1 || (cat $(AIRFLOW_HOME)/migrate.log; exit 1)
	touch $@

# Data Out's pools (one per destination type, deploy/pools.json): a real scheduler never runs a task
# whose pool does not exist, and tasks may not create pools themselves in Airflow 3.
$(AIRFLOW_HOME)/.pools: $(AIRFLOW_HOME)/.migrated deploy/pools.json
	$(BIN)/airflow pools import deploy/pools.json > $(AIRFLOW_HOME)/pools.log 2>&1 || (cat $(AIRFLOW_HOME)/pools.log; exit 1)
	touch $@

airflow-db: $(AIRFLOW_HOME)/.pools

# Airflow's api-server on http://localhost:8080 with the demo's state database: the Data Out pages
# (docs/ui.md). Sign in as admin; the password is in $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated
airflow-ui: airflow-db
	$(BIN)/airflow api-server --port 8080

# Warning filters for two deprecations inside Airflow's own dependencies (include/sandbox/quiet.py).
QUIET := PYTHONWARNINGS="$$($(BIN)/python include/sandbox/quiet.py)"

demo: airflow-db
	mkdir -p $(DEMO_DIR)
	$(QUIET) $(BIN)/python include/sandbox/demo.py

demo-churn: airflow-db
	mkdir -p $(DEMO_DIR)
	$(QUIET) $(BIN)/python include/sandbox/demo.py --churn

# make airflow [AIRFLOW_PORT=8080]: api-server, scheduler, dag-processor and triggerer with the stand-ins,
# an SMTP sink (.demo/mail/) and every connection; Ctrl-C or `make airflow-stop` stops it all.
# See docs/running-airflow.md.
airflow: airflow-db
	mkdir -p $(DEMO_DIR)
	$(QUIET) $(BIN)/python include/sandbox/airflow_local.py --port $(or $(AIRFLOW_PORT),8080) --demo-dir $(DEMO_DIR)

airflow-stop:
	$(BIN)/python include/sandbox/airflow_local.py --stop --demo-dir $(DEMO_DIR)

# Debian's headless Chromium, which the browser test drives (tests/data_out/ui/test_browser.py); apt-get
# runs only where /usr/bin/chromium is missing (as root, or through sudo).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
chromium:
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

test: airflow-db chromium dialects
	$(BIN)/ruff check plugins dags include tests
	$(BIN)/ruff format --check plugins dags include tests
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check plugins dags include tests
	$(BIN)/ruff format --check plugins dags include tests

# make bench [N=10000000] [CHURN=0.01]: the scale benchmark on the local Postgres (not part of make test);
# ends with one "bench: ..." line. See docs/performance.md.
bench: install
	$(BIN)/python -m bench.scale --members $(or $(N),1000000) --churn $(or $(CHURN),0.01)

# make bench-growth [SIZES="1000000 3000000 10000000"]: the scale benchmark at each size, a growth table and
# docs/img/growth.png (about 20 minutes for the default sizes). See docs/performance.md.
bench-growth: install
	$(BIN)/python -m bench.growth --members $(or $(SIZES),1000000 3000000 10000000) --churn $(or $(CHURN),0.01)

# make bench-mariadb [N=1000000]: peak RSS while staging N members from the local MariaDB (docs/warehouses.md)
bench-mariadb: install
	$(BIN)/python -m bench.mariadb_staging --members $(or $(N),1000000)

# make bench-customerio [N=1000000]: time to read a Customer.io segment of N members from its stand-in,
# against the floor its paging and 10 requests/s allow, and the reader's peak RSS (docs/sources.md)
bench-customerio: install
	$(BIN)/python -m bench.customerio --members $(or $(N),1000000)

# make bench-ui [DAYS=365] [AUDIENCES=200]: a year of hourly runs in a Postgres state database, then
# p50/p95 server time of the Data Out pages (not part of make test). See docs/ui.md.
bench-ui: install
	$(BIN)/python -m bench.ui --days $(or $(DAYS),365) --audiences $(or $(AUDIENCES),200)

# make history AUDIENCE=cio_cart_abandon_6h_v1 [LAST=10]: the last runs of an audience as a table
history: install
	$(BIN)/python -m data_out.history $(AUDIENCE) --last $(or $(LAST),10)

clean:
	rm -rf $(DEMO_DIR) $(AIRFLOW_HOME)
