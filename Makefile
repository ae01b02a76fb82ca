# Two commands do all the set-up: `make demo` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lock clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mlip-distill distill

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

# requirements.lock: the exact versions of this environment (after `make test` passes)
lock: $(STAMP)
	{ echo "# Exact versions of the environment the tests last passed in (\`pip freeze\`, without mlip-distill)."; \
	  echo "# torch is the CPU build: pip install -r requirements.lock --extra-index-url https://download.pytorch.org/whl/cpu"; \
	  $(PIP) freeze --exclude-editable | grep -v '^#' | grep -iv '^mlip.distill'; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock

clean:
	rm -rf $(VENV) runs build *.egg-info
