# Two commands do all the set-up on a fresh machine (Python 3.11+ and make):
#   make run    the portal with a demo on http://127.0.0.1:8000/
#   make test   the whole test suite (also the `ldap` extra: python-ldap builds against
#               libldap2-dev and libsasl2-dev, and its tests run Debian's slapd)
PYTHON ?= python3
VENV := .venv
CHECKSUM := $(shell cksum < pyproject.toml | cut -d' ' -f1)
STAMP := $(VENV)/.installed-$(CHECKSUM)
# The same venv, with sign-in through LDAP on top: `make run` does without it.
LDAP_STAMP := $(VENV)/.installed-ldap-$(CHECKSUM)
LDAP_HINT := python-ldap builds against the OpenLDAP and SASL headers: apt-get install libldap2-dev libsasl2-dev

.PHONY: run test lint clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

$(LDAP_STAMP): $(STAMP)
	$(VENV)/bin/pip install --quiet -e '.[test,ldap]' || { echo "$(LDAP_HINT)" >&2; exit 1; }
	touch $@

run: $(STAMP)
	$(VENV)/bin/python deploy/run_local.py

test: $(LDAP_STAMP)
	$(VENV)/bin/python deploy/run_tests.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf .dropscore test-artifacts
