# Two commands do everything on a fresh clone: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean

# Create the venv and install the package with dev extras. torch==2.13.0 (the CPU build here)
# is installed only when no torch imports, so a user's own CUDA build is kept.
$(VENV): pyproject.toml
	$(PY) -m venv --system-site-packages $(VENV) 2>/dev/null || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(VENV)

test: $(VENV)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

demo: $(VENV)
	$(BIN)/obbslim demo

lint: $(VENV)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
