# hematune — every target installs into .venv first if needed, so a fresh
# machine needs nothing but `make search …` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

MODEL      ?= cnn
DATA       ?= ../shared/data/blood-cells
TRIALS     ?= 30
TIMEOUT    ?= 1500
MAX_EPOCHS ?=
STUDY      ?=
STORAGE    ?=
GROUPS     ?=
VAL_FRACTION ?=
PRUNER     ?=
WEIGHTS    ?=
SPACE      ?=
FIX        ?=
SEED       ?=
TRIAL      ?= best
STAGE      ?=
NAME       ?=
CHAMPION   ?=
RELEASE    ?=
HOST       ?=
TOKEN      ?=
PORT       ?= 8080
WORKERS    ?=
PRECISION  ?=
GPU        ?=
QUICK      ?=
TOP        ?=
FOLDS      ?=

opt = $(if $(strip $(2)),$(1) "$(strip $(2))")
comma := ,
# GPU=0 hides every GPU (hematune trains on the CPU); otherwise a GPU nvidia-smi lists gets a CUDA backend
no_gpu = $(filter 0 no false off,$(GPU))
gpu_env = $(if $(strip $(GPU)),HEMATUNE_GPU=$(strip $(GPU)))
EXTRAS = dev,postgres$(if $(no_gpu),,$(if $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo y),$(comma)gpu))

.PHONY: install search test help dashboard

help:
	@echo "make search MODEL=cnn DATA=path/to/images   run or resume a study (TRIALS, TIMEOUT, MAX_EPOCHS, STUDY, STORAGE, GROUPS, VAL_FRACTION, PRUNER, WEIGHTS, SPACE, FIX, SEED, PRECISION, GPU=0)"
	@echo "make search … WORKERS=4                     the same with 4 local worker processes on one study"
	@echo "make worker STUDY=… [STORAGE=postgresql://…] [WORKERS=N]  join an existing study (another terminal or machine)"
	@echo "make dashboard [STUDY=…] [STORAGE=…] [PORT=8080]  browse studies in optuna-dashboard on 127.0.0.1"
	@echo "make select STUDY=… [TOP=3] [FOLDS=] [TIMEOUT=1500]  cross-validate the top trials on group folds of TRAIN (FOLDS empty: 5, or down to 2 to fit TIMEOUT), refit + ensemble the winner → studies/<study>/select/ (no TEST; resumable)"
	@echo "make report STUDY=… [STAGE=]              Markdown comparison report → reports/out/<study>.md (reads TEST); with make select's stages, STAGE= names the one whose val→TEST gap it states"
	@echo "make export STUDY=… [TRIAL=best|N]         best model → exports/<study>/model.keras + labels, preprocessing"
	@echo "make promote STUDY=… [TRIAL=|STAGE=] [NAME=] [CHAMPION=1]  versioned release → releases/<name>/v<N>/ (STAGE=trial|cv|refit|ensemble|ensemble-tta: a make select stage)"
	@echo "make serve [NAME=…|RELEASE=releases/<name>/vN] [PORT=8000] [HOST=…] [TOKEN=…]  upload page + JSON API on 127.0.0.1"
	@echo "make evaluate RELEASE=releases/<name>[/vN] DATA=other-lab/ [GROUPS=auto]  external validation on another source's class folders → reports/out/external-….md"
	@echo "make test                                   ruff check, then the test suite"
	@echo "make bench [QUICK=1]                        benchmarks side by side → reports/bench.md (about 66 min measured on 2 cores; QUICK: minutes)"
	@echo "make augment-preview [DATA=…]               augmented cells at strengths 0–1 → docs/augmentation.png (check by eye)"

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

search: $(STAMP)
	$(gpu_env) $(BIN)/hematune search --model $(MODEL) --data "$(DATA)" --trials $(TRIALS) $(call opt,--timeout,$(TIMEOUT)) \
		$(call opt,--max-epochs,$(MAX_EPOCHS)) $(call opt,--study,$(STUDY)) $(call opt,--storage,$(STORAGE)) \
		$(call opt,--groups,$(GROUPS)) $(call opt,--val-fraction,$(VAL_FRACTION)) $(call opt,--pruner,$(PRUNER)) \
		$(call opt,--weights,$(WEIGHTS)) $(call opt,--space,$(SPACE)) $(call opt,--fix,$(FIX)) $(call opt,--seed,$(SEED)) \
		$(call opt,--workers,$(WORKERS)) $(call opt,--precision,$(PRECISION))

# joins an existing study: data, model, space and split come from the study; DATA only if given here
.PHONY: worker
worker: $(STAMP)
	$(gpu_env) $(BIN)/hematune worker $(call opt,--study,$(STUDY)) $(call opt,--storage,$(STORAGE)) --trials $(TRIALS) \
		$(call opt,--timeout,$(TIMEOUT)) $(call opt,--workers,$(WORKERS)) $(call opt,--precision,$(PRECISION)) \
		$(if $(filter command line environment,$(origin DATA)),--data "$(DATA)")

dashboard: $(STAMP)
	$(BIN)/hematune dashboard --port $(PORT) $(call opt,--study,$(STUDY)) $(call opt,--storage,$(STORAGE))

# the study's TOP trials re-trained on FOLDS group folds of TRAIN, the winner refit and ensembled (never reads TEST);
# TIMEOUT (seconds of training) keeps the leader's folds and refit inside the budget; re-run to resume
.PHONY: select
select: $(STAMP)
	$(gpu_env) $(BIN)/hematune select --study "$(STUDY)" $(call opt,--storage,$(STORAGE)) $(call opt,--top,$(TOP)) \
		$(call opt,--folds,$(FOLDS)) $(call opt,--timeout,$(TIMEOUT))

.PHONY: report export promote

report: $(STAMP)
	$(BIN)/hematune report --study "$(STUDY)" $(call opt,--storage,$(STORAGE)) $(call opt,--stage,$(STAGE))

export: $(STAMP)
	$(BIN)/hematune export --study "$(STUDY)" --trial "$(TRIAL)" $(call opt,--storage,$(STORAGE))

promote: $(STAMP)
	$(BIN)/hematune promote --study "$(STUDY)" $(if $(filter command line environment,$(origin TRIAL)),--trial "$(TRIAL)") \
		$(call opt,--stage,$(STAGE)) $(call opt,--storage,$(STORAGE)) \
		$(call opt,--name,$(NAME)) $(if $(filter 1 yes true,$(CHAMPION)),--champion)

# serves the champion of releases/$(NAME) (and follows it), or one RELEASE=releases/<name>/v<N>; PORT defaults to
# 8000 here (8080 is the dashboard's); the token goes in the environment, not in the process list
.PHONY: serve
serve: $(STAMP)
	$(if $(strip $(TOKEN)),HEMATUNE_TOKEN="$(strip $(TOKEN))") $(BIN)/hematune serve $(call opt,--release,$(RELEASE)) \
		$(if $(strip $(RELEASE)),,$(call opt,--name,$(NAME))) $(call opt,--host,$(HOST)) \
		--port $(if $(filter command line environment,$(origin PORT)),$(PORT),8000)

# external validation: DATA must be named (its default is the reference set, which a release was trained on)
.PHONY: evaluate
evaluate: $(STAMP)
	$(if $(strip $(RELEASE)),,$(error make evaluate needs RELEASE=releases/<name> or releases/<name>/v<N>))
	$(if $(filter command line environment,$(origin DATA)),,$(error make evaluate needs DATA=<folder of another lab's class folders>))
	$(BIN)/hematune evaluate --release "$(RELEASE)" --data "$(DATA)" $(call opt,--groups,$(GROUPS))

# lint first (ruff, configured in pyproject.toml): a style or import slip fails in seconds, not after the suite
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# benchmarks are measurements, not tests: no timing is asserted anywhere (bench/)
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m bench.run $(if $(filter 1 yes true,$(QUICK)),--quick)
	$(BIN)/python -m bench.serving $(if $(filter 1 yes true,$(QUICK)),--quick) $(call opt,--release,$(RELEASE))

# a PNG grid of real cells from DATA at every aug_strength: what training feeds the model
.PHONY: augment-preview
augment-preview: $(STAMP)
	$(BIN)/hematune augment-preview --data "$(DATA)"
