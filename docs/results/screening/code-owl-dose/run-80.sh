#!/bin/bash
# Distilled students, code x owl: divergence and random masks at 80% of tokens (added before any result was read), in the code-owl workspace
# (same bases, teachers and data as ../code-owl/), code frozen as there (/work/wt-glue, 07b4f4c). PLAN.md.
export PYTHONPATH=/work/wt-glue PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_LOGGING_LEVEL=WARNING
cd /work/runs/screen-kl
S=/work/main/.venv/bin/sublim
P=/work/main/.venv/bin/python
for b in 0.8; do
  for m in divergence random; do
    $P - "$m" "$b" <<'PY'
import sys, yaml
m, b = sys.argv[1], float(sys.argv[2])
p = yaml.safe_load(open('params.yaml'))
p['lm']['student']['objective'] = 'distill'
p['lm']['screen'].update(stage=['screen'], method=m, action='mask', budget=b, threshold=None)
yaml.safe_dump(p, open(f'params-distill-{m}-{b}.yaml', 'w'), sort_keys=False)
PY
    date; $S flow lm -p params-distill-$m-$b.yaml > distill-$m-$b.log 2>&1; rc=$?; echo "$m $b rc $rc"
    [ $rc = 0 ] && mkdir -p out/distill-$m-$b && cp metrics/lm.json out/distill-$m-$b/metrics.json \
      && cp reports/lm/table.md out/distill-$m-$b/
  done
done
date; echo ALLDONE
