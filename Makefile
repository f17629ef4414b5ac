# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs
# what is missing (re-installing only when pyproject.toml changes).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# ModelOpt depends on torch; installing the CPU build first keeps pip from pulling a multi-GB CUDA
# build on CPU machines. On a GPU machine: make TORCH_SPEC='torch>=2.8' ...
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export PREFECT_HOME ?= $(CURDIR)/tmp/prefect-home

.PHONY: install browser demo test test-kernels evaluate-demo bench clean server pool deploy worker sweep-worker trigger

install: $(STAMP)

# torch through pip (TORCH_SPEC above); the rest through uv, which resolves the same versions as pip and
# installs them in seconds where pip took ~80 s on 2 cores. uv does not look at the local CPU wheel, but
# the installed torch satisfies ModelOpt, so uv leaves it alone. --compile-bytecode as pip does: where
# PYTHONDONTWRITEBYTECODE is set, nothing would ever be compiled and every process would parse
# Prefect, torch and ModelOpt from source (the suite took 20% longer).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --disable-pip-version-check uv
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	mkdir -p $(PREFECT_HOME)
	$(BIN)/python flows/int8.py --demo

# Two pytest-xdist workers: much of the suite waits on servers, subprocess start-up and one-thread
# imports, so a second worker fills the other core. --dist loadfile keeps each module on one worker
# (module fixtures: a server stack, a cluster, a test harness, each started once); the one session
# fixture two modules share, conftest's demo_cli_run, runs once under a lock.
test: $(STAMP) browser
	mkdir -p $(PREFECT_HOME)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

# The OpenVINO checks under each oneDNN kernel family OpenVINO may run on (a cap above this CPU's best
# family runs its best one): AMX, AVX512-VNNI, AVX2-VNNI, AVX2.
test-kernels: $(STAMP)
	for isa in AVX512_CORE_AMX AVX512_CORE_VNNI AVX2_VNNI AVX2; do echo "== ONEDNN_MAX_CPU_ISA=$$isa"; \
	  ONEDNN_MAX_CPU_ISA=$$isa $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_openvino.py \
	    tests/test_evaluate.py tests/test_sensitivity.py -k openvino || exit 1; done

# The deployment test renders the Prefect UI in Debian's headless Chromium; without it that one check
# skips with its reason. Installed here only when missing and when we may (root).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "note: chromium not installed; the UI check of tests/test_deploy.py will skip"; }

evaluate-demo: $(STAMP)
	$(BIN)/python -c "from tasks.config import load_demo_config; load_demo_config()"
	$(BIN)/python flows/evaluate.py --model demo/model/yolov10n-shapes.onnx \
	    --images tmp/demo-data/val/images --annotations tmp/demo-data/val/annotations.json --out tmp/demo-fp32-metrics.json

bench: $(STAMP)
	$(BIN)/python bench/refusal.py
	$(BIN)/python bench/flow_cache.py

clean:
	rm -rf tmp/demo_lowbit tmp/demo-data

# --- Deploy, trigger, schedule (a real Prefect server; run each in its own terminal) -------------
PREFECT_PORT ?= 4200
SERVER_URL := http://127.0.0.1:$(PREFECT_PORT)/api
PARAMS ?= {"config": {"demo": true}}
DEPLOYMENT ?= yolo-int8/demo-int8

server: $(STAMP)          ## SQLite-backed server with the UI at http://127.0.0.1:4200 (runs schedules)
	$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

pool: $(STAMP)            ## the process work pools: yolo-lowbit (INT8 runs), yolo-lowbit-sweeps (sweeps)
	PREFECT_API_URL=$(SERVER_URL) $(BIN)/prefect work-pool create yolo-lowbit --type process --overwrite
	PREFECT_API_URL=$(SERVER_URL) $(BIN)/prefect work-pool create yolo-lowbit-sweeps --type process --overwrite

deploy: $(STAMP)          ## every deployment in prefect.yaml (manual, nightly, demo)
	PREFECT_API_URL=$(SERVER_URL) $(BIN)/prefect --no-prompt deploy --all

worker: $(STAMP)          ## runs the flow runs of the pool from this checkout (one per machine, or LIMIT=1 each)
	PREFECT_API_URL=$(SERVER_URL) $(BIN)/prefect worker start --pool yolo-lowbit $(if $(LIMIT),--limit $(LIMIT))

sweep-worker: $(STAMP)    ## runs the sweeps (light: they start children on yolo-lowbit and wait)
	PREFECT_API_URL=$(SERVER_URL) $(BIN)/prefect worker start --pool yolo-lowbit-sweeps

trigger: $(STAMP)         ## e.g. make trigger DEPLOYMENT=yolo-int8/yolov10m-int8 PARAMS='{"config": {...}}'
	PREFECT_API_URL=$(SERVER_URL) $(BIN)/prefect deployment run '$(DEPLOYMENT)' --params '$(PARAMS)' --watch
