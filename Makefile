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
PRUNER     ?=
WEIGHTS    ?=
SPACE      ?=
FIX        ?=
SEED       ?=

opt = $(if $(strip $(2)),$(1) "$(strip $(2))")

.PHONY: install search test help

help:
	@echo "make search MODEL=cnn DATA=path/to/images   run or resume a study (TRIALS, TIMEOUT, MAX_EPOCHS, STUDY, STORAGE, GROUPS, PRUNER, WEIGHTS, SPACE, FIX, SEED)"
	@echo "make test                                   run the test suite"

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,postgres]'
	touch $@

search: $(STAMP)
	$(BIN)/hematune search --model $(MODEL) --data "$(DATA)" --trials $(TRIALS) $(call opt,--timeout,$(TIMEOUT)) \
		$(call opt,--max-epochs,$(MAX_EPOCHS)) $(call opt,--study,$(STUDY)) $(call opt,--storage,$(STORAGE)) \
		$(call opt,--groups,$(GROUPS)) $(call opt,--pruner,$(PRUNER)) $(call opt,--weights,$(WEIGHTS)) \
		$(call opt,--space,$(SPACE)) $(call opt,--fix,$(FIX)) $(call opt,--seed,$(SEED))

test: $(STAMP)
	$(BIN)/python -m pytest -q
