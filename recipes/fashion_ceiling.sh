#!/usr/bin/env bash
# The ceiling of the Fashion-MNIST recipes' network and budget, measured: the small_cnn of
# recipes/fashion_mnist_250.toml trained with method.name=supervised on ALL 60,000 training labels for the recipe's
# 3,000 steps, once at the recipe's labelled batch (16) and once at the student's unlabelled batch (16 x 7 = 112).
# No setting is chosen on the result: it bounds what any semi-supervised method can reach with this network,
# augmentation and step budget (recipes/README.md, "What would reach the goal").
#
# Usage: bash recipes/fashion_ceiling.sh DATA OUT
#   DATA  a folder with train/ and test/ made by `mpl data import fashion-mnist IDX --part train|test --seed 0`
#         (a study folder's data/, e.g. /work/studies/fashion/data)
#   OUT   gets all-b16/ and all-b112/ (runs, test.json) and ceiling.md; a finished run is skipped, a stopped one resumes
#   CEILING_STEPS=N  another budget (warm-up and wait scaled like the study's; the CI replay uses a handful)
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: bash recipes/fashion_ceiling.sh DATA OUT" >&2; exit 2; }
data=$1 out=$2
repo="$(cd "$(dirname "$0")/.." && pwd)"
mpl="${MPL:-$repo/.venv/bin/mpl}"
for part in train test; do
  [ -f "$data/$part/manifest.json" ] || { echo "error: $data/$part/manifest.json missing; import it with mpl data import fashion-mnist" >&2; exit 2; }
done
steps=${CEILING_STEPS:-3000}
scaled=$(( (100 * steps + 1500) / 3000 ))  # the recipe's 100 warm-up and wait steps at this budget
every=$(( steps < 500 ? steps : 500 ))
mkdir -p "$out"
for b in 112 16; do
  run="$out/all-b$b"
  if [ ! -f "$run/test.json" ]; then
    echo "[ceiling] batch $b: $run" >&2
    OMP_NUM_THREADS=1 "$mpl" train "$repo/recipes/fashion_mnist_250.toml" --set method.name=supervised \
      --set data.labeled="$data/train" --set data.unlabeled="$data/train" --set data.val="$data/test" \
      --set data.batch_size="$b" --set runtime.threads=1 --set schedule.steps="$steps" \
      --set student.warmup_steps="$scaled" --set student.wait_steps="$scaled" --set teacher.warmup_steps="$scaled" \
      --set eval.every="$every" --set checkpoint.every="$every" --set runtime.log_every="$(( steps < 50 ? steps : 50 ))" \
      --out "$run" >&2
    OMP_NUM_THREADS=1 "$mpl" eval "$run/student.safetensors" --data "$data/test" --json > "$run/test.json.tmp"
    mv "$run/test.json.tmp" "$run/test.json"
  fi
done
python3 - "$out" "$steps" "$data" > "$out/ceiling.md.tmp" <<'EOF'
import json, sys
from pathlib import Path

out, steps = Path(sys.argv[1]), int(sys.argv[2])
labelled = json.loads((Path(sys.argv[3]) / "train" / "manifest.json").read_text())["num_samples"]
print("| labelled images | batch | steps | images seen | test top-1 | test top-1 at step 500 / 1000 / 2000 / 3000 |")
print("|---:|---:|---:|---:|---:|---|")
for b in (16, 112):
    run = out / f"all-b{b}"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curve = {r["step"]: r["val/student_top1"] for r in rows if "val/student_top1" in r}
    points = " / ".join(f"{curve[s]:.3f}" for s in (500, 1000, 2000, 3000) if s in curve)
    top1 = json.loads((run / "test.json").read_text())["top1"]
    print(f"| {labelled:,} | {b} | {steps} | {steps * b:,} | {top1:.3f} | {points} |")
EOF
mv "$out/ceiling.md.tmp" "$out/ceiling.md"
cat "$out/ceiling.md"
