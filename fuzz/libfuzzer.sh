#!/usr/bin/env bash
# Coverage-guided fuzzing of one target with cargo-fuzz (libFuzzer), for sessions longer than
# the bounded run CI does: `fuzz/libfuzzer.sh TARGET [SECONDS]`; targets are listed in
# fuzz/src/lib.rs. Installs the pinned nightly toolchain and cargo-fuzz if missing. Crashes are
# left in fuzz/libfuzzer/artifacts/TARGET/: copy each into fuzz/corpus/TARGET/ once fixed, so it
# is replayed as a regular test from then on.
set -euo pipefail
cd "$(dirname "$0")"
target="${1:?usage: fuzz/libfuzzer.sh TARGET [SECONDS]}"
seconds="${2:-300}"
NIGHTLY=nightly-2026-05-20
CARGO_FUZZ=0.13.1

rustup toolchain list | grep -q "^$NIGHTLY" || rustup toolchain install "$NIGHTLY" --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version "$CARGO_FUZZ" --locked

corpus="libfuzzer/corpus/$target"
cargo run --release --quiet --bin fuzz-corpus -- "$target" "$corpus"
# The same limits as the stable runner (fuzz/src/lib.rs): 2 s per input; memory for the
# process as a whole, with room for the fixtures the targets load.
cargo "+$NIGHTLY" fuzz run --fuzz-dir libfuzzer "$target" "$corpus" -- \
  -max_total_time="$seconds" -timeout=2 -rss_limit_mb=2048 -max_len=1048576
