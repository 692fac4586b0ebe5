//! ember-core: BLOOM fine-tuning with LoRA on burn, independent of platform and backend.
//!
//! - [`config`]: `BloomConfig` from `config.json`.
//! - [`model`]: the BLOOM model (HF module names), ALiBi, masks, KV cache.
//! - [`checkpoint`]: loading HF model directories (safetensors, sharded, `pytorch_model.bin`).
//! - [`tokenizer`]: `tokenizer.json` and special tokens.
//! - [`generate`]: greedy and sampled generation.
//! - [`hub`]: Hugging Face Hub ids, their URLs and cache folders.
//!
//! Tensors live on a burn [`burn::tensor::Device`]; which backend runs them (wgpu on a GPU,
//! burn's CPU backend, WebGPU in a browser) is chosen by the caller when it creates the device.

pub mod budget;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod generate;
pub mod hub;
pub mod io;
pub mod lora;
pub mod loss;
pub mod model;
pub mod quant;
pub mod readback;
pub mod template;
pub mod text;
pub mod tokenizer;
pub mod train;

pub use config::BloomConfig;
pub use error::{Error, Result};
