#!/usr/bin/env bash
# Run every stage a config enables (its `stages:` list), in order; a missing pseudo / distill teacher first.
#   bash scripts/train_folds.sh [CONFIG] [key=value ...]      (default: configs/default.yaml)
# Several GPUs: DONTSTOP_FOLD_GPUS=0,1 trains the folds in parallel, one process per GPU; or launch a stage
# with `accelerate launch -m dontstop train CONFIG` for data-parallel training of each fold.
set -euo pipefail
SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
CONFIG="${1:-configs/default.yaml}"
shift || true
PY="${PYTHON:-python}"

# One look at the resolved config: its stages, its fold count, and whether it needs the generated demo data.
eval "$("$PY" - "$CONFIG" "$@" <<'PYEOF'
import sys
from pathlib import Path
from dontstop.config import load_config
cfg = load_config(sys.argv[1], sys.argv[2:])
demo = Path(cfg.competition.train).parent
needs_demo = demo.as_posix().endswith("input/demo") and not Path(cfg.competition.train).exists()
teacher = cfg.pseudo.teacher if "pseudo" in cfg.stages else cfg.distill.teacher if "distill" in cfg.stages else None
missing_teacher = teacher if teacher and not (Path(cfg.oof_dir) / teacher / "scores.json").is_file() else ""
print(f"STAGES='{' '.join(cfg.stages)}' N_FOLDS={cfg.folds.n_folds} DEMO_DIR='{demo if needs_demo else ''}' "
      f"TEACHER='{missing_teacher}' CONFIG_DIR='{Path(sys.argv[1]).parent}'")
PYEOF
)"

if [ -n "$DEMO_DIR" ]; then  # the embedded demo competition is generated, never committed
  "$PY" -m dontstop.demo --out "$DEMO_DIR"
fi

if [ -n "$TEACHER" ]; then  # pseudo-labels / soft labels need a finished teacher: train it first
  echo "== teacher $TEACHER is not finished: bash scripts/train_folds.sh $CONFIG_DIR/$TEACHER.yaml"
  bash "$SCRIPT" "$CONFIG_DIR/$TEACHER.yaml"
fi

for STAGE in $STAGES; do
  echo "== dontstop $STAGE $CONFIG $*"
  if [ "$STAGE" = train ] && [ -n "${DONTSTOP_FOLD_GPUS:-}" ]; then
    IFS=, read -ra GPUS <<< "$DONTSTOP_FOLD_GPUS"
    pids=()
    for ((k = 0; k < N_FOLDS; k++)); do
      CUDA_VISIBLE_DEVICES="${GPUS[$((k % ${#GPUS[@]}))]}" "$PY" -m dontstop train "$CONFIG" "$@" --fold "$k" &
      pids+=($!)
      if (( ${#pids[@]} == ${#GPUS[@]} )); then wait "${pids[@]}"; pids=(); fi
    done
    if (( ${#pids[@]} )); then wait "${pids[@]}"; fi
  fi
  "$PY" -m dontstop "$STAGE" "$CONFIG" "$@"   # after parallel folds: skips them and assembles the outputs
done
