#!/bin/bash
# issue 14 pre-registered (docs/results/screening/code-owl-sft2/PLAN.md): raw, divergence, random; code frozen at 31a63e7
export PYTHONPATH=/work/wt-sft2 PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_LOGGING_LEVEL=WARNING
cd /work/runs/sft2
for m in raw divergence random; do
  date; /work/main/.venv/bin/sublim flow lm -p params-$m.yaml > $m.log 2>&1; rc=$?; echo "$m rc $rc"
  [ $rc = 0 ] && mkdir -p out/$m && cp metrics/lm.json out/$m/metrics.json && cp reports/lm/table.md out/$m/
done
date; echo ALLDONE
