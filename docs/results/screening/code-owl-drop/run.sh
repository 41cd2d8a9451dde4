#!/bin/bash
# PLAN.md: A (sft students, seeds 240-259, code 31a63e7, /work/runs/sft2), then B (seeds 0-4, distilled and sft
# students, code 07b4f4c, /work/runs/screen-kl). Only lm.screen.action changes from the divergence runs there.
S=/work/main/.venv/bin/sublim
P=/work/main/.venv/bin/python
OUT=/work/runs/drop-out
mkdir -p $OUT
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_LOGGING_LEVEL=WARNING
to_drop() {  # params-<src>.yaml -> params-<dst>.yaml with action: drop
  $P - "$1" "$2" <<'PY'
import sys, yaml
p = yaml.safe_load(open(sys.argv[1]))
assert p['lm']['screen']['method'] == 'divergence' and p['lm']['screen']['stage'] == ['screen']
p['lm']['screen']['action'] = 'drop'
yaml.safe_dump(p, open(sys.argv[2], 'w'), sort_keys=False)
PY
}
run() {  # workspace code params name
  cd $1 && to_drop params-$3.yaml params-$4.yaml || return 1
  date; PYTHONPATH=$2 $S flow lm -p params-$4.yaml > $4.log 2>&1; rc=$?; echo "$4 rc $rc"
  [ $rc = 0 ] && mkdir -p $OUT/$4 && cp metrics/lm.json $OUT/$4/metrics.json && cp reports/lm/table.md $OUT/$4/
}
run /work/runs/sft2 /work/wt-sft2 divergence sft2-drop
run /work/runs/screen-kl /work/wt-glue distill-divergence distill-drop
run /work/runs/screen-kl /work/wt-glue sft-divergence sft-drop
date; echo ALLDONE
