# make test   - create .venv if missing, install the requirements, run the test suite (what CI runs)
# make demo   - the end-to-end demo, offline if need be (teacher -> student with KD -> test -> single image)
# make lint   - ruff
# make gpu-check [ARGS=--dry-run] - measure a GPU run (benchmarks/gpu_check.py): gpu_check.json + .md in $OUT or ./gpu_check
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: test demo lint bench gpu-check clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

demo: $(STAMP)
	$(PY) -m tools.demo

bench: $(STAMP)
	$(PY) benchmarks/bench_inference.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_loader.py

gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py $(ARGS)

clean:
	rm -rf demo_output demo_data .pytest_cache
