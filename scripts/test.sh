#!/usr/bin/env bash
# Runs every test on a fresh Debian machine: installs what the tests need (software Vulkan so
# the wgpu tests run without a GPU; the wasm32 target, wasm-bindgen-cli and Debian's Chromium
# for the browser tests; Node.js and playwright-core for the page's end-to-end test), builds once
# in the release profile (shared by tests and binaries), runs the whole test suite, then the
# browser tests (ember-core as wasm32 in headless Chromium), then the page end to end, and at
# real size (a bloom-560m-shaped model in the page). Format and
# lints are checked too (cargo fmt, cargo clippy -D warnings).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! compgen -G "/usr/share/vulkan/icd.d/lvp_icd*.json" >/dev/null; then
  echo "== installing Mesa's software Vulkan (lavapipe) for the wgpu tests"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! fc-list | grep -qi "WenQuanYi"; then
  # (and a small CJK font, so the page's screenshots show the Chinese demo data as text)
  echo "== installing Debian's Chromium and ChromeDriver for the browser tests"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-wqy-microhei >/dev/null
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "== installing Node.js and npm for the end-to-end test of the page (playwright-core)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
source scripts/wasm-tools.sh
rustup component add rustfmt clippy >/dev/null 2>&1 || true  # present on most toolchains already

# The workspace's own target/ (where `cargo run` builds too, so README's two commands compile
# once), unless CARGO_TARGET_DIR says otherwise (.ci/run keeps CI's outside the clone).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR=never

echo "== format (rustfmt.toml)"
cargo fmt --all -- --check

echo "== build (release profile, used by tests and binaries alike)"
cargo build --release --workspace --locked

echo "== lints (clippy, every warning an error; reuses the release build's dependencies)"
cargo clippy --release --workspace --all-targets --locked -- -D warnings

echo "== tests (CPU backend and wgpu on software Vulkan; each fuzz target mutated for EMBER_FUZZ_SECONDS)"
EMBER_REQUIRE_WGPU=1 EMBER_FUZZ_SECONDS="${EMBER_FUZZ_SECONDS:-4}" cargo test --release --workspace --locked

echo "== browser tests: ember-core as wasm32 in headless Chromium (WebGPU and CPU)"
web/test.sh --locked

echo "== lints of the browser crate (wasm32; reuses the browser tests' dependencies)"
cargo clippy --target wasm32-unknown-unknown -p ember-web --all-targets --locked -- -D warnings

echo "== the browser page end to end: build it (dev profile), serve it with ember web, drive Chromium"
web/build.sh --dev --locked
(cd tests/e2e && npm ci --no-audit --no-fund --silent && node page.mjs)

echo "== the page at real size: a bloom-560m-shaped model (random f16 weights, 1.1 GB) on the CPU (WebAssembly) path"
(cd tests/e2e && node real_size.mjs)
echo "== the same shape on WebGPU (SwiftShader): one layer with the real vocabulary, generation only"
(cd tests/e2e && EMBER_E2E_DEVICE=webgpu EMBER_E2E_LAYERS=1 EMBER_E2E_CACHE=0 EMBER_E2E_TRAIN=0 node real_size.mjs)
echo "== all tests passed"
