# colorize-batch: daily tasks. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
IN     ?= demo/in
OUT    ?= demo/out
STAMP  := $(VENV)/.installed

.PHONY: install demo run test lint train eval bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install  ## build a small tree of grey photos and colorize it with the shipped weights
	rm -rf demo/in
	$(BIN)/python -m colorize_batch.examples demo/in
	$(BIN)/colorize-batch run demo/in demo/out --report demo/report.json
	@echo "colour results: demo/out (report: demo/report.json)"

run: install  ## make run IN=scans OUT=colour
	$(BIN)/colorize-batch run $(IN) $(OUT)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check colorize_batch tests benchmarks

train: install  ## reproduce the shipped weights (three stages, about 2 hours on 2 idle CPU cores)
	$(BIN)/colorize-batch train --out runs/lite-v1
	$(BIN)/colorize-batch train --init runs/lite-v1/generator.pt --config finetune.yaml --out runs/lite-ft
	$(BIN)/colorize-batch train --init runs/lite-ft/generator.pt --config finetune256.yaml --out runs/lite-ft256
	$(BIN)/colorize-batch export runs/lite-ft256 weights/colorize-lite.pt

eval: install  ## score the shipped weights on the shared validation photos
	$(BIN)/colorize-batch eval ../shared/data/val/sun_hays80 --report runs/eval.json --sheet runs/eval_sheet.png

bench: install
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)  # e.g. BENCH_ARGS="--quick" or "--memory-check --device cuda"

clean:
	rm -rf demo runs/eval.json .pytest_cache .ruff_cache build *.egg-info
