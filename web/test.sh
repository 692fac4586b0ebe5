#!/usr/bin/env bash
# The browser tests of web/tests/browser.rs: ember-core compiled to wasm32 and run in headless
# Chromium through wasm-bindgen-test-runner and chromedriver (webdriver.json gives Chromium's
# flags; --enable-unsafe-webgpu lets it offer its software WebGPU adapter). Needs the
# wasm32-unknown-unknown target, wasm-bindgen-cli at Cargo.lock's wasm-bindgen version, and
# Debian's chromium + chromium-driver: scripts/test.sh installs them.
set -euo pipefail
cd "$(dirname "$0")"
export CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}
export WASM_BINDGEN_TEST_ONLY_WEB=1
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-600}
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
# The dev profile without debug info: a release build of burn for wasm32 costs far more build
# time than these small fixture models save at run time.
exec cargo test --target wasm32-unknown-unknown -p ember-web "$@"
