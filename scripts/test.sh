#!/usr/bin/env bash
# Runs every test on a fresh Debian machine: installs what the tests need (software Vulkan so
# the wgpu tests run without a GPU, the wasm32 target), builds once in the release profile
# (shared by tests and binaries), runs the whole test suite, and checks the wasm32 build.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! compgen -G "/usr/share/vulkan/icd.d/lvp_icd*.json" >/dev/null; then
  echo "== installing Mesa's software Vulkan (lavapipe) for the wgpu tests"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
rustup target add wasm32-unknown-unknown >/dev/null

# Outside the clone so that repeated runs (and CI on the same machine) start warm.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ember-target}"
export CARGO_TERM_COLOR=never

echo "== build (release profile, used by tests and binaries alike)"
cargo build --release --workspace --locked

echo "== tests (CPU backend and wgpu on software Vulkan)"
EMBER_REQUIRE_WGPU=1 cargo test --release --workspace --locked

echo "== ember-core and ember-web build for wasm32"
cargo check --release --locked --target wasm32-unknown-unknown -p ember-core -p ember-web
echo "== all tests passed"
