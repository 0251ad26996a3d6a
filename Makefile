# Two commands do everything on a fresh machine: `make demo` and `make test`.
# EXTRA=gpu installs the CUDA build of TensorFlow instead of the CPU one.
PYTHON_SYSTEM ?= python3
EXTRA ?= cpu
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_data

.PHONY: install demo test lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRA),serve,dev]'
	# keras-hub without tensorflow-text, whose `tensorflow` requirement would overwrite tensorflow-cpu (pyproject.toml).
	$(PY) -m pip install -q --no-deps 'keras-hub==0.32.*'
	touch $@

demo: install
	$(PY) -m training.data.demo $(DEMO_DIR) --seed 0
	$(PY) -m training.train --config training/config.demo.yaml

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# grounding.py trains a recipe on several worlds and seeds (an hour or more at its defaults): run it by hand.
bench: install
	@for script in $(filter-out bench/grounding.py,$(wildcard bench/*.py)); do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) artifacts $(DEMO_DIR) .pytest_cache
