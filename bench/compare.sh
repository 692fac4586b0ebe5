#!/usr/bin/env bash
# Ember against transformers + peft on this machine's CPU, side by side in one run: LoRA training
# and greedy generation on three shapes (bench/compare.py says which and what is recorded).
#
#   bench/compare.sh [--shapes small,bloom-560m,bloom-1b4] [--steps 5] [--repeats 3]
#                    [--only train|generate] [--ember-args "--kernels none"] [--out compare.jsonl]
#
# Needs a release build (cargo build --release) and the fixture venv (tests/fixtures/README.md),
# or PYTHON=/path/to/python with torch, transformers and peft. Takes about 10 minutes on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
ember="${CARGO_TARGET_DIR:-$HOME/.cache/ember-target}/release/ember"
[ -x "$ember" ] || ember="$root/target/release/ember"
python="${PYTHON:-$root/tests/fixtures/.venv/bin/python}"
# A relative path is made absolute from where the script was called (not resolved: a venv's
# python is a symlink to the base one); a bare name is looked up in PATH.
case "$python" in /*) ;; */*) python="$PWD/$python" ;; *) python="$(command -v "$python")" ;; esac
case "$ember" in /*) ;; *) ember="$PWD/$ember" ;; esac
exec "$python" "$root/bench/compare.py" --ember "$ember" --python "$python" "$@"
