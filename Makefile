# corral's task runner. CI runs `make test` verbatim (see .ci/run).
SHELL := /bin/bash
PY ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= /var/lib/corral
APT_PACKAGES := bubblewrap mmdebstrap nftables iproute2 python3-venv python3-pip python3-seccomp uidmap ca-certificates skopeo umoci docker-registry
PYTEST_ARGS ?=

.PHONY: setup apt venv template serve test bench bench-templates lint spec clean-test

setup: apt venv template

# Debian packages corral needs (idempotent: installs only what is missing).
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# The venv sees the system site-packages for python3-seccomp (a Debian package).
venv: $(BIN)/.installed
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv --system-site-packages $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,dev]'
	touch $@

# The templates (base, and code-interpreter with Jupyter kernels), built with mmdebstrap and cached
# until their recipe changes.
template: venv
	$(BIN)/python -m corral.templates ensure base --templates-dir $(DATA_DIR)/templates
	$(BIN)/python -m corral.templates ensure code-interpreter --templates-dir $(DATA_DIR)/templates

serve: setup
	$(BIN)/corral serve --data-dir $(DATA_DIR)

test: setup
	CORRAL_TEMPLATES_DIR=$(DATA_DIR)/templates $(BIN)/pytest $(PYTEST_ARGS)

bench: setup
	CORRAL_TEMPLATES_DIR=$(DATA_DIR)/templates $(BIN)/python -m bench

# Template builds and starts (issue 4): builds a 1 GiB template once (kept; BENCH_KEEP=0 deletes it).
bench-templates: setup
	CORRAL_TEMPLATES_DIR=$(DATA_DIR)/templates $(BIN)/python -m bench.templates

lint: venv
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python scripts/gen_sync.py --check
	$(BIN)/python scripts/gen_openapi.py --check

spec: venv
	$(BIN)/python scripts/gen_openapi.py
