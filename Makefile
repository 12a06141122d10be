# Streaming inference engine - everything runs from a local virtualenv.
#   make demo   set up and run the local stack with a demo producer and a live view
#   make test   lint, type-check, and run unit, integration and chaos tests on real servers
#   make bench  benchmark report on a local Apache Kafka + tritonserver (docs/benchmarks.md, reports/bench/)
#   make lock   regenerate constraints.txt, the tested dependency set every install step uses

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_RATE ?= 500
WORKERS ?= 1
PYTEST_ARGS ?=
REPEAT ?= 1

.PHONY: demo test lint unit integration chaos bench bench-quick bench-exactly-once models clean kafka otelcol otelcol-sources lock

BENCH_STAMP := $(VENV)/.installed-bench

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (the tritonserver python stub is built for 3.11); set PYTHON=..."; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[local,dev]"
	touch $(STAMP)

# constraints.txt pins every installed distribution (extras included) to the versions the tests passed
# with; pyproject.toml keeps the ranges. `make lock` resolves the newest versions those ranges allow in
# a fresh virtualenv and writes them: run `make test` on the result, then commit it.
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e ".[local,dev,bench]"
	{ echo "# The tested dependency set (make lock; $$($(LOCK_VENV)/bin/python --version)). Used by every install step."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable; } > constraints.txt
	rm -rf $(LOCK_VENV)

# Java 17+ checked and Apache Kafka's jars fetched by Maven once (~/.cache/sie); one clear line if not possible.
kafka: $(STAMP)
	$(BIN)/sie fetch-kafka

# The OpenTelemetry Collector built by Go from the sources pinned in observability/otel/otelcol-sie
# once (~/.cache/sie/otelcol-<version>-<hash>; minutes the first time); one clear line without Go.
otelcol: $(STAMP)
	$(BIN)/sie fetch-otelcol

# Regenerate observability/otel/otelcol-sie from the builder manifest after editing it (then commit both).
OCB_VERSION := v0.165.0
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
otelcol-sources:
	cd observability/otel && PATH="$(dir $(GO)):$$PATH" $(GO) run go.opentelemetry.io/collector/cmd/builder@$(OCB_VERSION) \
		--config builder.yaml --skip-compilation

# The Collector is optional for the demo: without Go, one line says so and sie up runs untraced.
demo: kafka
	-$(BIN)/sie fetch-otelcol
	$(BIN)/sie up --workers $(WORKERS) --demo-rate $(DEMO_RATE)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy engine streams inference models observability ops benchmarks

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q $(PYTEST_ARGS)

integration: kafka otelcol
	$(BIN)/python -m pytest tests/integration -q $(PYTEST_ARGS)

# Each chaos test REPEAT times in a row (make chaos REPEAT=5): a fault test that fails once in N runs
# is a defect, so fault-handling changes are run several times.
chaos: kafka
	$(BIN)/python -m pytest tests/chaos -q -rs --repeat $(REPEAT) $(PYTEST_ARGS)

test: lint kafka otelcol
	$(BIN)/python -m pytest tests -q -rs --durations=15 $(PYTEST_ARGS)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[local,dev,bench]"
	touch $(BENCH_STAMP)

# One Apache Kafka broker (KRaft, on the JVM; emptied at the start, its data removed at the end) and
# one tritonserver; each system swept on its own topics, then drains timed: ~15 min (bench-quick ~8).
# Writes docs/benchmarks.md, docs/benchmarks-latency.png and reports/bench/bench.json.
bench: $(BENCH_STAMP) kafka
	$(BIN)/sie bench

bench-quick: $(BENCH_STAMP) kafka
	$(BIN)/sie bench --quick

# Exactly-once against at-least-once (alternating drains and 1,000 events/s latency runs, ~10 min):
# a kept section of docs/benchmarks.md and reports/bench/exactly_once.json.
bench-exactly-once: $(BENCH_STAMP) kafka
	$(BIN)/python -m benchmarks.exactly_once

models: $(STAMP)
	$(BIN)/python model_repository/train.py

.PHONY: models-report
# The ONNX models and their FP16/INT8/INT8-dynamic variants against the original: accuracy, agreement,
# size, Triton latency (perf_analyzer) and engine drain -> docs/models.md (generated section),
# docs/models-report.json, docs/models-latency.png (~10 min; benchmarks/models_report.py).
models-report: $(BENCH_STAMP) kafka
	$(BIN)/sie models report

clean:
	rm -rf .sie reports .mypy_cache .pytest_cache .ruff_cache

.PHONY: soak
# 10 minutes at 70% of the max sustainable rate (found by a short sweep first; ~13 min in all) on
# a local Apache Kafka broker; RSS per process (workers, broker, tritonserver) with its slope, p99
# and lag over time -> reports/soak/ (soak.json, soak.png, soak.md).
# SOAK_ARGS e.g. "--minutes 2" or "--rate 2000". Not part of `make test`.
SOAK_ARGS ?=
soak: $(BENCH_STAMP) kafka
	$(BIN)/python -m benchmarks.soak $(SOAK_ARGS)
