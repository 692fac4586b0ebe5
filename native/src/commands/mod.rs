pub mod bench;
pub mod data;
pub mod data_args;
pub mod demo;
pub mod eval;
pub mod generate;
pub mod info;
pub mod lora_args;
pub mod merge;
pub mod quant_args;
pub mod train;
pub mod train_args;
pub mod web;

use std::path::Path;

use ember_core::checkpoint::ModelDir;
use ember_core::lora::adapter_file::load_adapter;
use ember_core::lora::merge::merge;
use ember_core::model::BloomForCausalLM;
use ember_core::model::ModuleTree;
use ember_core::tokenizer::Tokenizer;

use crate::device::Placement;
use crate::hub::{self, Want};

/// A model directory loaded onto the chosen device, with its tokenizer.
pub struct Loaded {
    pub dir: ModelDir,
    pub model: BloomForCausalLM,
    pub tokenizer: Tokenizer,
    pub device: burn::tensor::Device,
}

/// Loads a model directory (and a LoRA adapter, merged in for inference at no extra cost).
pub fn load(model: &Path, adapter: Option<&Path>, placement: &Placement, quiet: bool) -> anyhow::Result<Loaded> {
    let model = &hub::local(model, Want::Model)?;
    let adapter = hub::local_opt(adapter, Want::Adapter)?;
    let adapter = adapter.as_deref();
    let dir = ModelDir::open(model)?;
    let tokenizer = Tokenizer::open(model, &dir.config)?;
    let selected = placement.select()?;
    let options = placement.load_options()?;
    let weights = crate::device::weights_description(placement.dtype, options.quantization(&dir.config).as_ref());
    if !quiet {
        eprintln!("device: {}", selected.description);
    }
    crate::device::doing(format!("running {} ({weights}) on {}", model.display(), selected.description));
    let mut model = dir.load(&selected.device, &options)?;
    model.kernels = placement.kernels;
    if let Some(adapter) = adapter {
        let (_, report) = load_adapter(&mut model, adapter, &selected.device, placement.allow_nonfinite)?;
        merge(&mut model);
        if !quiet {
            // Over 4-bit weights adapters stay beside them (merging would requantize the base).
            let how = if model.has_4bit_weights() { "beside the 4-bit weights" } else { "merged" };
            eprintln!("adapter: {} ({} LoRA layers, {how})", adapter.display(), report.targeted.len());
        }
    }
    Ok(Loaded { dir, model, tokenizer, device: selected.device })
}
