#!/usr/bin/env bash
# Run every stage a config enables (its `stages:` list), in order.
#   bash scripts/train_folds.sh [CONFIG] [key=value ...]      (default: configs/default.yaml)
# Several GPUs: DONTSTOP_FOLD_GPUS=0,1 trains folds in parallel, one process per GPU; or wrap a stage in
# `accelerate launch` yourself for data-parallel training of each fold.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-configs/default.yaml}"
shift || true
PY="${PYTHON:-python}"

# The embedded demo competition is generated, never committed: write it on first use.
if grep -q "input/demo/" "$CONFIG" && [ ! -f input/demo/train.csv ]; then
  "$PY" -m dontstop.demo --out input/demo
fi

STAGES=$("$PY" - "$CONFIG" "$@" <<'PYEOF'
import sys
from dontstop.config import load_config
print(" ".join(load_config(sys.argv[1], sys.argv[2:]).stages))
PYEOF
)
N_FOLDS=$("$PY" - "$CONFIG" "$@" <<'PYEOF'
import sys
from dontstop.config import load_config
print(load_config(sys.argv[1], sys.argv[2:]).folds.n_folds)
PYEOF
)

for STAGE in $STAGES; do
  echo "== dontstop $STAGE $CONFIG"
  if [ "$STAGE" = train ] && [ -n "${DONTSTOP_FOLD_GPUS:-}" ]; then
    IFS=, read -ra GPUS <<< "$DONTSTOP_FOLD_GPUS"
    pids=()
    for ((k = 0; k < N_FOLDS; k++)); do
      gpu=${GPUS[$((k % ${#GPUS[@]}))]}
      CUDA_VISIBLE_DEVICES=$gpu "$PY" -m dontstop train "$CONFIG" "$@" --fold "$k" &
      pids+=($!)
      if (( ${#pids[@]} == ${#GPUS[@]} )); then wait "${pids[@]}"; pids=(); fi
    done
    [ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
  fi
  "$PY" -m dontstop "$STAGE" "$CONFIG" "$@"
done
