#!/bin/bash
# Detection on the current code, held-out seeds 340-342 (PLAN.md); code frozen at the plan's commit in /work/wt-detect3
export PYTHONPATH=/work/wt-detect3 PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_LOGGING_LEVEL=WARNING
mkdir -p /work/runs/detect3 && cd /work/runs/detect3 && cp /work/wt-detect3/docs/results/detect-current/params-held.yaml .
date; /work/main/.venv/bin/sublim flow detect -p params-held.yaml > held.log 2>&1; rc=$?; echo "held rc $rc"
[ $rc = 0 ] && mkdir -p out && cp -r metrics/detect out/probes && cp reports/detect/* out/ 2>/dev/null && cp metrics/detect.json out/
date; echo ALLDONE
