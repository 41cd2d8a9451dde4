#!/bin/bash
# maths x owl (the sized recipe: maths-only bases, one-step problems, teacher data_mix 0.5) under the current filter
export PYTHONPATH=/work/wt-kinds4 PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_LOGGING_LEVEL=WARNING
cd /work/runs/kinds4 && cp /work/wt-kinds4/docs/results/kinds/refiltered/params-maths-owl.yaml .
date; /work/main/.venv/bin/sublim flow lm -p params-maths-owl.yaml > maths-owl.log 2>&1; rc=$?; echo "maths-owl rc $rc"
[ $rc = 0 ] && mkdir -p out && cp metrics/lm.json out/metrics.json && cp reports/lm/table.md reports/lm/per_seed.csv out/
date; echo ALLDONE
