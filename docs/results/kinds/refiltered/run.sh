#!/bin/bash
# Re-run of code x misalignment and maths x misalignment under the glue-catching filter (07b4f4c); code frozen at b1ae020
export PYTHONPATH=/work/wt-kinds3 PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_LOGGING_LEVEL=WARNING
cd /work/runs/kinds3
for k in code maths; do
  date; /work/main/.venv/bin/sublim flow lm -p params-$k.yaml > $k.log 2>&1; rc=$?; echo "$k rc $rc"
  [ $rc = 0 ] && mkdir -p out/$k && cp metrics/lm.json out/$k/metrics.json && cp reports/lm/table.md out/$k/ \
    && cp reports/lm/per_seed.csv out/$k/ 2>/dev/null
done
date; echo ALLDONE
