#!/usr/bin/env bash
# Builds the browser page into web/dist: the ember-web crate for wasm32, bound to JS by
# wasm-bindgen (pinned to Cargo.lock's version; installed if missing), the static files, and the
# bundled demo model. Everything comes from crates.io and rustup; nothing is downloaded at run time.
#
#   web/build.sh          size-optimised release (profile web-release: opt-level s, LTO, stripped),
#                         then `wasm-opt -Oz` when binaryen's wasm-opt is installed. Slow: see
#                         docs/PERFORMANCE.md for its cost and the size it gives.
#   web/build.sh --dev    the dev profile the browser tests use: minutes, not tens of minutes, but
#                         a larger and slower wasm (what CI's end-to-end test serves).
# Extra arguments go to cargo (e.g. --locked). Serve the result with `ember web`.
set -euo pipefail
cd "$(dirname "$0")"
profile=web-release
cargo_args=()
for arg in "$@"; do
  case $arg in
    --dev) profile=dev ;;
    *) cargo_args+=("$arg") ;;
  esac
done
source ../scripts/wasm-tools.sh

cargo build --target wasm32-unknown-unknown -p ember-web --lib --profile "$profile" "${cargo_args[@]}"
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
profile_dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
wasm="$target_dir/wasm32-unknown-unknown/$profile_dir/ember_web.wasm"

rm -rf dist
mkdir -p dist/demo/model
bindgen_args=(--target web --no-typescript --out-dir dist --out-name ember_web)
[ "$profile" = dev ] || bindgen_args+=(--remove-name-section --remove-producers-section)
wasm-bindgen "${bindgen_args[@]}" "$wasm"
if [ "$profile" != dev ] && command -v wasm-opt >/dev/null; then
  echo "== wasm-opt -Oz"
  wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals \
    dist/ember_web_bg.wasm -o dist/ember_web_bg.opt.wasm
  mv dist/ember_web_bg.opt.wasm dist/ember_web_bg.wasm
fi
cp static/* dist/
cp ../demo/model/{config.json,tokenizer.json,tokenizer_config.json,special_tokens_map.json,model.safetensors} dist/demo/model/

size=$(stat -c %s dist/ember_web_bg.wasm)
gz=$(gzip -9 -c dist/ember_web_bg.wasm | wc -c)
echo "== web/dist ready ($profile): ember_web_bg.wasm $((size / 1048576)) MiB, $((gz / 1048576)) MiB gzipped. Serve it: ember web"
