use std::path::PathBuf;

use burn::tensor::Device;
use ember_core::checkpoint::{LoadOptions, ModelDir, WEIGHT_FILES};
use ember_core::lora::adapter_file::load_adapter;
use ember_core::lora::inject::lora_report;
use ember_core::model::ModelShape;

use super::lora_args::LoraArgs;
use super::quant_args::QuantArgs;
use ember_core::model::WeightDType;
use ember_core::text::thousands;

use crate::hub::{self, Want};

/// `bytes` as MiB with one decimal (GiB from 10 GiB up).
fn megabytes(bytes: u64) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    if mib >= 10240.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face model directory (config.json, tokenizer.json, weights), or a Hub id (org/name[@revision]).
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter directory (PEFT format) or Hub id: show what it adapts.
    #[arg(long, conflicts_with_all = ["target_modules", "target_modules_regex"])]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    lora: LoraArgs,
    /// Load adapter weights that hold NaN or infinities (refused by default).
    #[arg(long)]
    allow_nonfinite: bool,
    /// Stored precision to size the weights for: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: WeightDType,
    #[command(flatten)]
    quant: QuantArgs,
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    args.model = hub::local(&args.model, Want::Model)?;
    args.adapter = hub::local_opt(args.adapter.as_deref(), Want::Adapter)?;
    let dir = ModelDir::open(&args.model)?;
    let options = LoadOptions { dtype: args.dtype, quant: args.quant.config()?, ..LoadOptions::default() };
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
    let shape = ModelShape::of_config(c);
    println!("parameters: {}", thousands(shape.base_params()));
    let quant = options.quantization(c);
    let layout = match &quant {
        Some(q) => format!(
            "Linear layers 4-bit ({}{}), the rest {}",
            q.bnb_4bit_quant_type,
            if q.bnb_4bit_use_double_quant { ", double quant" } else { "" },
            args.dtype
        ),
        None => format!("{}", args.dtype),
    };
    println!("in memory:  {} ({layout})", megabytes(shape.weight_bytes(args.dtype, quant.as_ref())));

    let settings = args.lora.settings();
    let report = if let Some(adapter) = &args.adapter {
        // Loading (on the CPU) checks the adapter's shapes against the real weights.
        let device = Device::flex();
        let options = LoadOptions { allow_nonfinite: args.allow_nonfinite, ..options };
        let mut model = dir.load(&device, &options)?;
        Some(load_adapter(&mut model, adapter, &device, args.allow_nonfinite)?.1)
    } else if settings.target_modules.is_some() {
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
