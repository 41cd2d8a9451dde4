#!/bin/bash
# issue 13 pre-registered (docs/results/confirm/cross-code/PLAN.md, 63f864d): llama sft students on the code x owl data
export PYTHONPATH=/work/wt-sft2 PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_LOGGING_LEVEL=WARNING
cd /work/runs/sft2
date; /work/main/.venv/bin/sublim flow lm -p params-cross.yaml > cross.log 2>&1; rc=$?; echo "cross rc $rc"
[ $rc = 0 ] && mkdir -p out/cross && cp metrics/lm.json out/cross/metrics.json && cp reports/lm/table.md out/cross/
date; echo ALLDONE
