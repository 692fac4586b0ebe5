//! Ember in the browser: `ember-core` compiled to wasm32, on WebGPU when the browser offers an
//! adapter and on the CPU (WebAssembly) otherwise. The page itself (issue #7) is still to come;
//! what is here is what the browser tests (`web/tests/browser.rs`, `web/test.sh`) run.

#[cfg(target_arch = "wasm32")]
pub mod backend;
