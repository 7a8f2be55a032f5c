# corral's task runner. CI runs `make test` verbatim (see .ci/run).
SHELL := /bin/bash
PY ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= /var/lib/corral
APT_PACKAGES := bubblewrap mmdebstrap nftables iproute2 python3-venv python3-pip python3-seccomp uidmap ca-certificates skopeo umoci docker-registry runsc qemu-system-x86 qemu-utils busybox-static cpio e2fsprogs lz4 gcc libc6-dev
PYTEST_ARGS ?=
# The older e2b Python SDK the compat tests also drive (E2B_SANDBOX_URL exists since 2.7; this one
# still creates with POST /sandboxes and speaks Connect through its vendored client).
E2B_OLD_VERSION := 2.20.0
E2B_CI_OLD_VERSION := 2.0.0
E2B_OLD_VENV := .venv-e2b-old
JS_COMPAT := tests/compat/js

.PHONY: setup apt node venv e2b-sdks template serve test bench bench-backends bench-templates lint spec clean-test

setup: apt venv template

# Debian packages corral needs (idempotent: installs only what is missing).
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# node and npm for the e2b JS SDK tests, from Debian if the machine has none (that SDK wants node >= 20.18.1).
node:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }

# The e2b SDKs that tests/compat drives: the latest Python one is in the dev extra; the older
# Python one gets its own venv; the JS one is installed from the committed lock file.
e2b-sdks: $(E2B_OLD_VENV)/.installed $(JS_COMPAT)/node_modules/.installed
$(E2B_OLD_VENV)/.installed: Makefile
	test -x $(E2B_OLD_VENV)/bin/python || $(PY) -m venv $(E2B_OLD_VENV)
	$(E2B_OLD_VENV)/bin/pip install -q 'e2b==$(E2B_OLD_VERSION)' 'e2b-code-interpreter==$(E2B_CI_OLD_VERSION)'
	touch $@
$(JS_COMPAT)/node_modules/.installed: $(JS_COMPAT)/package-lock.json | node
	cd $(JS_COMPAT) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The venv sees the system site-packages for python3-seccomp (a Debian package).
venv: $(BIN)/.installed
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv --system-site-packages $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,dev]'
	touch $@

# The templates (base, and code-interpreter with Jupyter kernels), built with mmdebstrap and cached
# until their recipe changes; the microVM guest kernel, initramfs and base snapshot likewise.
template: venv
	$(BIN)/python -m corral.templates ensure base --templates-dir $(DATA_DIR)/templates
	$(BIN)/python -m corral.templates ensure code-interpreter --templates-dir $(DATA_DIR)/templates
	$(BIN)/python -m corral.backends.microvm prepare --data-dir $(DATA_DIR) --template base
	$(BIN)/python -m corral.backends.microvm gc --data-dir $(DATA_DIR)  # older agents' snapshots (remade on use)

serve: setup
	$(BIN)/corral serve --data-dir $(DATA_DIR)

test: setup e2b-sdks
	CORRAL_TEMPLATES_DIR=$(DATA_DIR)/templates $(BIN)/pytest $(PYTEST_ARGS)

bench: setup
	CORRAL_TEMPLATES_DIR=$(DATA_DIR)/templates $(BIN)/python -m bench
	CORRAL_TEMPLATES_DIR=$(DATA_DIR)/templates $(BIN)/python -m bench.backends

# Every isolation backend side by side: create -> first output, idle memory, floors (issue 7).
bench-backends: setup
	CORRAL_TEMPLATES_DIR=$(DATA_DIR)/templates $(BIN)/python -m bench.backends

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
