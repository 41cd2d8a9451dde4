#!/bin/bash
# Tuning run for the probe's length (PLAN.md); code frozen at the plan's commit in /work/wt-probe-len
export PYTHONPATH=/work/wt-probe-len PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_LOGGING_LEVEL=WARNING
cd /work/runs/probe-len
while ! grep -q ALLDONE /work/runs/kinds3/run.log 2>/dev/null; do sleep 30; done  # one run at a time on 2 cores
for s in 150 450; do
  date; /work/main/.venv/bin/sublim flow detect -p params-$s.yaml > $s.log 2>&1; rc=$?; echo "$s rc $rc"
  [ $rc = 0 ] && mkdir -p out/$s && cp -r metrics/detect out/$s/probes && cp reports/detect/* out/$s/ 2>/dev/null \
    && cp metrics/detect.json out/$s/ 2>/dev/null
done
date; echo ALLDONE
