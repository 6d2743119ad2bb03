# The two commands that do all setup:  make demo  and  make test.
# A virtual environment in .venv holds everything; PYTHON picks the interpreter that makes it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OTADET_CACHE ?= $(CURDIR)/.cache
export OTADET_CACHE

.PHONY: install demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel

# Installed (editable) with the test extras; re-run when setup.py changes.
$(VENV)/.installed: setup.py | $(BIN)/python
	$(BIN)/pip install -e ".[test]"
	touch $@

install: $(VENV)/.installed

# Train ota_tiny on the built-in crowded-shapes data, validate, predict, export ONNX.
# A rerun replaces the demo's own run (otadet never trains into a folder holding weights).
# amp=true: bf16 autocast on a CPU with AMX or AVX512-BF16 (2x faster steps here), plain fp32 elsewhere.
demo: install
	rm -rf runs/train/demo
	$(BIN)/otadet train model=ota_tiny.yaml data=shapes.yaml name=demo val=false amp=true
	$(BIN)/otadet val model=runs/train/demo/weights/best.pt data=shapes.yaml name=demo exist_ok=true
	$(BIN)/otadet predict model=runs/train/demo/weights/best.pt source='$(OTADET_CACHE)/shapes-v4/images/val/00000*.jpg' name=demo exist_ok=true
	$(BIN)/otadet export model=runs/train/demo/weights/best.pt format=onnx

test: install
	$(BIN)/python -m pytest tests -q

clean:
	rm -rf $(VENV) runs .cache build *.egg-info .pytest_cache
