// The Web Worker that runs the model: the same wasm module as the page, entered through
// start_worker (web/src/worker/mod.rs), which answers the page's messages.
import init, { start_worker } from "./ember_web.js";
await init({ module_or_path: "./ember_web_bg.wasm" });
start_worker();
