use std::path::PathBuf;

use ember_core::checkpoint::{ModelDir, WEIGHT_FILES};

use super::{reject_adapter, with_commas};

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face model directory (config.json, tokenizer.json, weights).
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter directory (PEFT format).
    #[arg(long)]
    adapter: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    reject_adapter(&args.adapter)?;
    let dir = ModelDir::open(&args.model)?;
    let c = &dir.config;
    let weights = WEIGHT_FILES.iter().find(|f| args.model.join(f).is_file()).copied().unwrap_or("(none found)");
    println!("model:      {}", args.model.display());
    println!("type:       BloomForCausalLM ({} layers, {} heads of {}, hidden {}, vocab {})", c.n_layer, c.n_head, c.head_dim(), c.hidden_size, c.vocab_size);
    println!("layer norm: eps {}, residual from {}", c.layer_norm_epsilon, if c.apply_residual_connection_post_layernorm { "after layer norm" } else { "before layer norm" });
    println!("weights:    {weights}{}", c.torch_dtype.as_deref().map(|d| format!(" ({d})")).unwrap_or_default());
    println!("parameters: {}", with_commas(c.num_parameters()));
    Ok(())
}
