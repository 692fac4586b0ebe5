#!/usr/bin/env bash
# Runs every test on a fresh Debian machine: installs what the tests need (software Vulkan so
# the wgpu tests run without a GPU; the wasm32 target, wasm-bindgen-cli and Debian's Chromium
# for the browser tests), builds once in the release profile (shared by tests and binaries),
# runs the whole test suite, then the browser tests (ember-core as wasm32 in headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! compgen -G "/usr/share/vulkan/icd.d/lvp_icd*.json" >/dev/null; then
  echo "== installing Mesa's software Vulkan (lavapipe) for the wgpu tests"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "== installing Debian's Chromium and ChromeDriver for the browser tests"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
rustup target add wasm32-unknown-unknown >/dev/null
# The test runner must be the exact wasm-bindgen version in Cargo.lock. (Not --locked: a locked
# dependency of wasm-bindgen-cli is missing from the registry.)
wasm_bindgen=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
if [ "$(wasm-bindgen --version 2>/dev/null | cut -d' ' -f2)" != "$wasm_bindgen" ]; then
  echo "== installing wasm-bindgen-cli $wasm_bindgen"
  cargo install -q wasm-bindgen-cli --version "$wasm_bindgen"
fi

# Outside the clone so that repeated runs (and CI on the same machine) start warm.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ember-target}"
export CARGO_TERM_COLOR=never

echo "== build (release profile, used by tests and binaries alike)"
cargo build --release --workspace --locked

echo "== tests (CPU backend and wgpu on software Vulkan)"
EMBER_REQUIRE_WGPU=1 cargo test --release --workspace --locked

echo "== browser tests: ember-core as wasm32 in headless Chromium (WebGPU and CPU)"
web/test.sh --locked
echo "== all tests passed"
