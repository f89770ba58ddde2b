# Two commands a newcomer needs: `make demo` and `make test`. Both set up what is missing
# first, through one idempotent `make install`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench lint clean

install: $(STAMP) node_modules/.installed

# The venv is rebuilt only when the dependency pins change. pip is upgraded first: the
# bundled one backtracks for minutes on this dependency set.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

# kinesalite, the local Kinesis endpoint, pinned in package-lock.json.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: install
	$(BIN)/totes demo

# pytest exits 5 when it collects no test; that is a failure of the suite, not a pass.
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$status

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules .totes .pytest_cache
