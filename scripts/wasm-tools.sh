# Sourced by scripts/test.sh and web/build.sh: the wasm32 target, and wasm-bindgen-cli at exactly
# the wasm-bindgen version in Cargo.lock (the CLI and the library must match). Not --locked: a
# locked dependency of wasm-bindgen-cli is missing from the registry.
rustup target add wasm32-unknown-unknown >/dev/null
wasm_bindgen=$(grep -A1 '^name = "wasm-bindgen"$' "$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')
if [ "$(wasm-bindgen --version 2>/dev/null | cut -d' ' -f2)" != "$wasm_bindgen" ]; then
  echo "== installing wasm-bindgen-cli $wasm_bindgen"
  cargo install -q wasm-bindgen-cli --version "$wasm_bindgen"
fi
