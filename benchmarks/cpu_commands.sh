#!/usr/bin/env bash
# Wall time of the README's CPU commands, as .ci/run runs them: the seed command with
# --epochs 1 --num_steps 2 (with --resize, then without) and the smoke pipeline, each from a
# fresh run folder. Prints the machine and each command's seconds; the smoke pipeline's
# report.md gives its stages' times.
#
#     bash benchmarks/cpu_commands.sh DATA [LOG]     # DATA: CIFAR-10 in any layout spnas reads
#
# With LOG (e.g. benchmarks/results/cpu_commands_<date>.log) the output is also written there.
set -euo pipefail
DATA=$(cd "${1:?give the CIFAR-10 folder: bash benchmarks/cpu_commands.sh DATA [LOG]}" && pwd)
[ -n "${2:-}" ] && exec > >(tee "$2") 2>&1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "date $(date -u +%FT%TZ); $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p');" \
     "python $(python -c 'import platform; print(platform.python_version())')," \
     "torch $(python -c 'import torch; print(torch.__version__)'), spnas at" \
     "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'); data $DATA"

timed() {  # timed NAME COMMAND...: runs it, prints "NAME: S s"
    local name=$1 start
    shift
    start=$(date +%s.%N)
    "$@" > "$WORK/$name.out" 2>&1 || { tail -5 "$WORK/$name.out"; echo "$name failed"; exit 1; }
    echo "$name: $(python -c "print(f'{$(date +%s.%N) - $start:.1f}')") s"
}

mkdir -p "$WORK/run_scripts/data"
ln -s "$DATA" "$WORK/run_scripts/data/teco-data"
cd "$WORK/run_scripts"
SEED=(python "$ROOT/run_scripts/run_spnas.py" --layers 20 --num_choices 4 --batch_size 64
      --epochs 1 --num_steps 2 --lr 0.025 --momentum 0.9 --weight-decay 0.0003 --print_freq 100
      --val_interval 5 --save_path ./checkpoints/ --seed 0 --data_path data/teco-data/
      --classes 10 --dataset cifar10 --cutout --cutout_length 16 --auto_aug)
timed "seed command --resize" "${SEED[@]}" --exp_name resize --resize
timed "seed command, 32x32" "${SEED[@]}" --exp_name plain
cd "$ROOT"
timed "smoke pipeline" spnas pipeline --config recipes/smoke.yaml --out "$WORK/smoke" \
    --data_path "$DATA"
grep '^| time: ' "$WORK/smoke/report.md"  # its stages' times
