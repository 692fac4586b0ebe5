use std::path::PathBuf;

use burn::tensor::Device;
use ember_core::checkpoint::{LoadOptions, ModelDir, WEIGHT_FILES};
use ember_core::lora::adapter_file::load_adapter;
use ember_core::lora::inject::lora_report;
use ember_core::model::ModelShape;

use super::lora_args::LoraArgs;
use ember_core::text::thousands;

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face model directory (config.json, tokenizer.json, weights).
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter directory (PEFT format): show what it adapts.
    #[arg(long, conflicts_with_all = ["target_modules", "target_modules_regex"])]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    lora: LoraArgs,
    /// Load adapter weights that hold NaN or infinities (refused by default).
    #[arg(long)]
    allow_nonfinite: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = ModelDir::open(&args.model)?;
    let c = &dir.config;
    let weights = WEIGHT_FILES.iter().find(|f| args.model.join(f).is_file()).copied().unwrap_or("(none found)");
    println!("model:      {}", args.model.display());
    println!(
        "type:       BloomForCausalLM ({} layers, {} heads of {}, hidden {}, vocab {})",
        c.n_layer,
        c.n_head,
        c.head_dim(),
        c.hidden_size,
        c.vocab_size
    );
    println!(
        "layer norm: eps {}, residual from {}",
        c.layer_norm_epsilon,
        if c.apply_residual_connection_post_layernorm { "after layer norm" } else { "before layer norm" }
    );
    println!("weights:    {weights}{}", c.torch_dtype.as_deref().map(|d| format!(" ({d})")).unwrap_or_default());
    println!("parameters: {}", thousands(ModelShape::of_config(c).base_params()));

    let report = if let Some(adapter) = &args.adapter {
        // Loading (on the CPU) checks the adapter's shapes against the real weights.
        let device = Device::flex();
        let options = LoadOptions { allow_nonfinite: args.allow_nonfinite, ..LoadOptions::default() };
        let mut model = dir.load(&device, &options)?;
        Some(load_adapter(&mut model, adapter, &device, args.allow_nonfinite)?.1)
    } else if let Some(settings) = args.lora.settings() {
        Some(lora_report(&settings.build(None)?, ModelShape::of_config(c))?)
    } else {
        None
    };
    if let Some(report) = report {
        println!("LoRA on {} modules:", report.targeted.len());
        for name in &report.targeted {
            println!("  {name}");
        }
        if !report.saved.is_empty() {
            println!("trained in full (modules_to_save): {}", report.saved.join(", "));
        }
        println!("{}", report.trainable_line());
    }
    Ok(())
}
