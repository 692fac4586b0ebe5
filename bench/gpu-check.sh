#!/usr/bin/env bash
# The first run on an NVIDIA GPU, in one go (under 8 minutes): which adapters ember sees, whether
# the fixture models give transformers' greedy tokens there, ember's training and generation speed
# at bloom-560m and bloom-1b4 shapes (f16 and bf16, batch 4 x 512, fused kernels on and off), the
# fused kernels one by one, and transformers + peft on CUDA for the same shapes. Every result is
# one JSON line in one file, each with "check" (what ran), "rc" and "seconds".
#
#   bench/gpu-check.sh [--ember PATH] [--python PATH] [--out FILE] [--budget SECONDS]
#
# Needs no network and no build: a prebuilt `ember` (default: target/release/ember or
# $CARGO_TARGET_DIR's) and a Python with torch (CUDA), transformers and peft. Vulkan: wgpu needs
# the Vulkan loader (libvulkan.so.1) and NVIDIA's ICD; without them `ember devices` lists no GPU,
# the ember rows record the failure, and the PyTorch rows still run. docs/PERFORMANCE.md ("GPU")
# says how to provide the loader and how to turn the file into the table.
set -uo pipefail
cd "$(dirname "$0")/.."
ember="${CARGO_TARGET_DIR:-$HOME/.cache/ember-target}/release/ember"
[ -x "$ember" ] || ember=target/release/ember
python=python3
out=gpu-check.jsonl
budget=450 # seconds: the checks after this point are recorded as skipped, so the run ends in time
while [ $# -gt 0 ]; do
  case "$1" in
    --ember) ember=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
case "$python" in /*) ;; */*) python="$PWD/$python" ;; esac
: >"$out"
started=$SECONDS
log=$(mktemp)

# record CHECK TIMEOUT COMMAND...: runs the command, appends its last JSON line (or none) with
# check, rc and seconds merged in; a command that would start past the budget is skipped.
record() {
  local check=$1 limit=$2
  shift 2
  if [ $((SECONDS - started)) -ge "$budget" ]; then
    printf '{"check": "%s", "skipped": "time budget of %s s spent"}\n' "$check" "$budget" >>"$out"
    return
  fi
  local t0=$SECONDS rc=0
  timeout "$limit" "$@" >"$log" 2>&1 || rc=$?
  local json
  json=$(grep '^{' "$log" | tail -1)
  "$python" - "$check" "$rc" $((SECONDS - t0)) "${json:-{\}}" "$(grep -v XDG_RUNTIME_DIR "$log" | tail -c 600)" >>"$out" <<'PY'
import json, sys
check, rc, seconds, line, tail = sys.argv[1:]
row = {"check": check, "rc": int(rc), "seconds": int(seconds)}
row.update(json.loads(line))
if int(rc) != 0:
    row["output_tail"] = tail
print(json.dumps(row))
PY
  echo "$check: rc $rc, $((SECONDS - t0)) s" >&2
}

record environment 60 "$python" -c '
import json, subprocess, torch, transformers, peft
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except FileNotFoundError:
    gpu = "nvidia-smi not found"
print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__, "cuda": torch.cuda.is_available(), "nvidia_smi": gpu}))'
# `auto:` names the adapter ember would pick; "no hardware GPU" when wgpu found none.
record devices 60 sh -c "'$ember' devices | \"$python\" -c 'import json,sys; t=sys.stdin.read(); print(json.dumps({\"listing\": t, \"gpu\": \"no hardware GPU\" not in t and \"no adapters\" not in t}))'"

# Greedy parity: every fixture model's golden cases (transformers' generate()) on gpu:0.
record greedy_parity 120 "$python" - "$ember" <<'PY'
import json, pathlib, subprocess, sys
ember = sys.argv[1]
models = pathlib.Path("tests/fixtures/models")
cases = equal = 0
failures = []
for golden in sorted(models.glob("*/generate.json")):
    for case in json.loads(golden.read_text())["cases"]:
        cmd = [ember, "generate", "--model", str(golden.parent), "--greedy", "--json", "--device", "gpu:0",
               "--max-new-tokens", str(case["max_new_tokens"])]
        cmd += ["--prompt", case["prompt_text"]] if "prompt_text" in case else \
               ["--prompt-ids", ",".join(map(str, case["prompt_ids"]))]
        run = subprocess.run(cmd, capture_output=True, text=True)
        got = json.loads(run.stdout.strip().splitlines()[-1])["generated_ids"] if run.returncode == 0 else run.stderr[-300:]
        cases += 1
        if got == case["generated_ids"]:
            equal += 1
        else:
            failures.append({"model": golden.parent.name, "case": case["name"], "got": got})
print(json.dumps({"cases": cases, "equal": equal, "failures": failures[:5]}))
sys.exit(0 if cases and cases == equal else 1)
PY

for shape in bloom-560m bloom-1b4; do
  for dtype in bf16 f16; do
    for kernels in all none; do
      record "ember_train_${shape}_${dtype}_kernels_${kernels}" 90 "$ember" bench train --shape $shape --batch 4 --seq 512 \
        --dtype $dtype --kernels $kernels --steps 3 --warmup 1 --device gpu:0 --json
    done
    record "peft_train_${shape}_${dtype}" 90 sh -c "cd bench && '$python' peft_baseline.py --shape $shape --batch 4 --seq 512 --dtype $dtype --steps 3 --device cuda --json"
  done
  record "ember_generate_${shape}" 60 "$ember" bench generate --shape $shape --device gpu:0 --repeats 2 --json
  record "hf_generate_${shape}" 60 sh -c "cd bench && '$python' hf_generate.py --shape $shape --device cuda --repeats 2 --json"
done
record ember_kernels_bloom-1b4 60 "$ember" bench kernels --shape bloom-1b4 --batch 4 --seq 512 --device gpu:0 --json

rm -f "$log"
echo "$((SECONDS - started)) s; results in $out" >&2
