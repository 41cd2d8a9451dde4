#!/bin/bash
# Runs PLAN.md's jobs one at a time with `sublim run` (what each DVC stage calls), then copies the in-context
# measurements here. Usage: run-icl.sh WORKSPACE CODE_DIR   (the workspace holds a copy of params-icl.yaml)
set -euo pipefail
ws=$1; code=$2; here=$(cd "$(dirname "$0")" && pwd)
cd "$ws"
run() { echo "$(date +%T) $*"; PYTHONPATH="$code" sublim run -p params.yaml "$@"; }
run lm.questions
for s in $(python -c "import yaml; print(*yaml.safe_load(open('params.yaml'))['lm']['seeds'])"); do
  run lm.base --seed "$s" --variant shared
  for line in trait control; do run lm.teacher --seed "$s" --gen 0 --variant "$line"; done
  for line in trait control; do
    run lm.generate --seed "$s" --gen 1 --variant "$line"
    run lm.filter --seed "$s" --gen 1 --variant "$line"
    run lm.icl --seed "$s" --gen 1 --variant "$line"
  done
  mkdir -p "$here/icl"
  for line in trait control; do cp "metrics/lm/icl/s$s-$line/metrics.json" "$here/icl/s$s-$line.json"; done
done
PYTHONPATH="$code" python "$here/teachers.py" "$ws"
echo "$(date +%T) done"
