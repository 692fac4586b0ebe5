pub mod bench;
pub mod generate;
pub mod info;

use std::path::Path;

use ember_core::checkpoint::ModelDir;
use ember_core::model::BloomForCausalLM;
use ember_core::tokenizer::Tokenizer;

use crate::device::{self, DeviceChoice};

/// A model directory loaded onto the chosen device, with its tokenizer.
pub struct Loaded {
    pub dir: ModelDir,
    pub model: BloomForCausalLM,
    pub tokenizer: Tokenizer,
    pub device: burn::tensor::Device,
}

pub fn load(model: &Path, choice: DeviceChoice, quiet: bool) -> anyhow::Result<Loaded> {
    let dir = ModelDir::open(model)?;
    let tokenizer = Tokenizer::open(model, &dir.config)?;
    let selected = device::select(choice)?;
    if let Some(notice) = &selected.notice {
        eprintln!("note: {notice}");
    }
    if !quiet {
        eprintln!("device: {}", selected.description);
    }
    let model = dir.load_model(&selected.device)?;
    Ok(Loaded { dir, model, tokenizer, device: selected.device })
}

/// Rejects `--adapter` until LoRA adapters can be loaded.
pub fn reject_adapter(adapter: &Option<std::path::PathBuf>) -> anyhow::Result<()> {
    if let Some(path) = adapter {
        anyhow::bail!(
            "--adapter {}: loading LoRA adapters is not implemented yet in this build; run without --adapter",
            path.display()
        );
    }
    Ok(())
}

/// `1234567` → `1,234,567`.
pub fn with_commas(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
