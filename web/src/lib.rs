//! Ember in the browser: `ember-core` compiled to wasm32, on WebGPU when the browser offers an
//! adapter and on the CPU (WebAssembly) otherwise.
//!
//! - [`page`]: the leptos page (`start_page`, called by `index.html`).
//! - [`worker`]: the Web Worker that runs the model (`start_worker`, called by `worker.js`).
//! - [`protocol`] and [`message`]: what they say to each other.
//! - [`backend`]: which device the browser gives us.

pub mod examples;
pub mod protocol;

#[cfg(target_arch = "wasm32")]
pub mod backend;
#[cfg(target_arch = "wasm32")]
pub mod message;
#[cfg(target_arch = "wasm32")]
pub mod page;
#[cfg(target_arch = "wasm32")]
pub mod worker;
