# colorize-batch: daily tasks. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
IN     ?= demo/in
OUT    ?= demo/out
STAMP  := $(VENV)/.installed

.PHONY: install demo run test lint train train-lite eval bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install  ## build a small tree of grey photos and colorize it with the shipped weights
	rm -rf demo/in demo/hints
	$(BIN)/python -m colorize_batch.examples demo/in demo/hints
	$(BIN)/colorize-batch run demo/in demo/out --report demo/report.json
	@echo "colour results: demo/out (report: demo/report.json)"

run: install  ## make run IN=scans OUT=colour
	$(BIN)/colorize-batch run $(IN) $(OUT)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check colorize_batch tests benchmarks
	$(BIN)/mypy colorize_batch

train: install  ## reproduce the shipped default weights (effnet-lite0 + hint branch: six stages and a weight average, about 3.7 h on 2 idle CPU cores)
	$(BIN)/colorize-batch train --config recipes/effnet-stage1.yaml --out runs/eff-s1
	$(BIN)/colorize-batch train --init runs/eff-s1/generator.pt --config recipes/effnet-stage2.yaml --out runs/eff-s2
	$(BIN)/colorize-batch train --init runs/eff-s2/generator.pt --config recipes/effnet-campaign.yaml --out runs/eff-s4
	$(BIN)/colorize-batch train --init runs/eff-s4/generator.pt --config recipes/effnet-hints.yaml --out runs/eff-hints
	$(BIN)/colorize-batch export runs/eff-hints runs/eff-s5.pt
	$(BIN)/colorize-batch train --init runs/eff-s5.pt --config recipes/effnet-soup-ingredient.yaml --out runs/eff-s6
	$(BIN)/python benchmarks/soup.py runs/eff-s5.pt runs/eff-s6/generator.pt --out runs/eff-soup.pt --name colorize-effnet-lite0
	$(BIN)/colorize-batch train --init runs/eff-soup.pt --config recipes/effnet-hints-refit.yaml --out runs/eff-hints7
	$(BIN)/colorize-batch export runs/eff-hints7 weights/colorize-effnet-lite0.pt

train-lite: install  ## reproduce the previous default, colorize-lite.pt (three stages, about 2 hours)
	$(BIN)/colorize-batch train --out runs/lite-v1
	$(BIN)/colorize-batch train --init runs/lite-v1/generator.pt --config recipes/finetune.yaml --out runs/lite-ft
	$(BIN)/colorize-batch train --init runs/lite-ft/generator.pt --config recipes/finetune256.yaml --out runs/lite-ft256
	$(BIN)/colorize-batch export runs/lite-ft256 weights/colorize-lite.pt

eval: install  ## score the shipped weights on the shared validation photos
	$(BIN)/colorize-batch eval ../shared/data/val/sun_hays80 --report runs/eval.json --sheet runs/eval_sheet.png

bench: install
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)  # e.g. BENCH_ARGS="--quick", "--memory-check --device cuda" or
	# "--weights weights/colorize-lite.pt weights/colorize-effnet-lite0.pt" (both in one run)

clean:
	rm -rf demo runs/eval.json .pytest_cache .ruff_cache build *.egg-info
