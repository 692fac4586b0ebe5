#!/usr/bin/env bash
# Ember against transformers + peft on the same shape, batch, sequence length and dtype, on this
# machine's CPU: LoRA training (ember bench train vs bench/peft_baseline.py) and generation
# (ember bench generate vs bench/hf_generate.py). Prints both JSON results and the ratios
# ember/reference (above 1.0: ember is faster, or uses more memory for the memory row).
#
#   bench/compare.sh [--shape bloom-560m] [--batch 4] [--seq 128] [--dtype f32] [--steps 5]
#
# Needs a release build (cargo build --release) and the fixture venv (tests/fixtures/README.md),
# or PYTHON=/path/to/python with torch, transformers and peft.
set -euo pipefail
cd "$(dirname "$0")/.."
shape=bloom-560m batch=4 seq=128 dtype=f32 steps=5
while [ $# -gt 0 ]; do
  case "$1" in
    --shape) shape=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --seq) seq=$2; shift 2 ;;
    --dtype) dtype=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
ember="${CARGO_TARGET_DIR:-$HOME/.cache/ember-target}/release/ember"
[ -x "$ember" ] || ember=target/release/ember
python="${PYTHON:-tests/fixtures/.venv/bin/python}"
# A relative path is made absolute (not resolved: a venv's python is a symlink to the base one),
# so it still names the interpreter after `cd bench`; a bare name is looked up in PATH.
case "$python" in /*) ;; */*) python="$PWD/$python" ;; esac
# PyTorch's OpenMP threads spin between parallel regions unless told not to.
export OMP_WAIT_POLICY=PASSIVE

last_json() { grep '^{' | tail -1; }
echo "== training: $shape, batch $batch x $seq tokens, $dtype, CPU" >&2
ours=$("$ember" bench train --shape "$shape" --batch "$batch" --seq "$seq" --dtype "$dtype" --steps "$steps" --device cpu --json | last_json)
theirs=$(cd bench && "$python" peft_baseline.py --shape "$shape" --batch "$batch" --seq "$seq" --dtype "$dtype" --steps "$steps" --json | last_json)
echo "== generation: $shape, prompt 128, 32 new tokens, f32, CPU" >&2
ours_gen=$("$ember" bench generate --shape "$shape" --device cpu --json | last_json)
theirs_gen=$(cd bench && "$python" hf_generate.py --shape "$shape" --json | last_json)

"$python" - "$ours" "$theirs" "$ours_gen" "$theirs_gen" <<'PY'
import json, sys
ours, theirs, ours_gen, theirs_gen = (json.loads(a) for a in sys.argv[1:])
print("ember  train   ", json.dumps(ours))
print("peft   train   ", json.dumps(theirs))
print("ember  generate", json.dumps(ours_gen))
print("hf     generate", json.dumps(theirs_gen))
rows = [
    ("training tokens/s", ours["tokens_per_s"], theirs["tokens_per_s"]),
    ("training peak RSS (MiB)", ours["peak_rss_mb"], theirs["peak_rss_mb"]),
    ("prefill tokens/s", ours_gen["prefill_tokens_per_s"], theirs_gen["prefill_tokens_per_s"]),
    ("decode tokens/s", ours_gen["decode_tokens_per_s"], theirs_gen["decode_tokens_per_s"]),
    ("generation peak RSS (MiB)", ours_gen["peak_rss_mb"], theirs_gen["peak_rss_mb"]),
]
print(f"\n{'metric':<28}{'ember':>12}{'reference':>12}{'ember/ref':>11}")
for name, a, b in rows:
    print(f"{name:<28}{a:>12.1f}{b:>12.1f}{a / b:>10.2f}x")
PY
