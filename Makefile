# Two commands set everything up on a fresh machine:
#   make serve   the webhook on https://127.0.0.1:8443 with the bundled example policy
#   make test    lint, type checks, import contracts, unit and end-to-end tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-unit lint fixtures generate clean e2e-binaries kyverno bench

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable '.[test]'
	touch $@

serve: $(STAMP)
	$(BIN)/toolforge-admission serve --dev

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy policies webhooks certs tests
	$(BIN)/lint-imports

# The e2e tests need kube-apiserver, etcd, kube-controller-manager, kubectl and the Tekton
# controller, built from Go modules and cached (the first run on a machine takes ~20 minutes);
# building them here, outside pytest, shows the progress.
e2e-binaries: $(STAMP)
	$(BIN)/python tests/e2e/build.py

test: lint e2e-binaries
	$(BIN)/pytest

# The fast loop: no cluster, no server started, no fuzzing (`make test` runs those too).
test-unit: $(STAMP)
	$(BIN)/pytest -m "not e2e and not slow"

# Rewrite the files generated from another source (tests/generate.py says which); a unit test
# fails while one is stale.
generate: $(STAMP)
	$(BIN)/python tests/generate.py

# Regenerate tests/fixtures/ from a real control plane and the real Tekton controller.
fixtures: $(STAMP)
	TOOLFORGE_ADMISSION_REGENERATE_FIXTURES=1 $(BIN)/pytest tests/e2e/test_fixtures.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache

# Benchmark (not part of the tests): server side against a Go reference, then end to end through
# the e2e harness's kube-apiserver with no policy, the suite, the Go reference,
# ValidatingAdmissionPolicy and Kyverno (bench/e2e.py): bench/README.md.
bench: $(STAMP) kyverno
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Kyverno v1.19.1 for the benchmark's kyverno mode, built from its Go module and cached (the
# first build takes about 6 minutes on 2 cores): only `make bench` builds it, never `make test`.
kyverno: $(STAMP)
	$(BIN)/python bench/kyverno.py
