use std::path::PathBuf;

use burn::tensor::Device;
use ember_core::checkpoint::{LoadOptions, ModelDir};
use ember_core::lora::adapter_file::load_adapter;
use ember_core::lora::merge::save_merged;

use super::quant_args::QuantArgs;

use crate::hub::{self, Want};

#[derive(clap::Args)]
pub struct Args {
    /// The base model directory, or a Hub id (org/name[@revision]).
    #[arg(long)]
    model: PathBuf,
    /// The LoRA adapter directory (PEFT format), or a Hub id.
    #[arg(long)]
    adapter: PathBuf,
    /// Where to write the merged model directory.
    #[arg(long)]
    output: PathBuf,
    /// Largest weight file before sharding with an index, as transformers' max_shard_size (e.g. 5GB, 500MB).
    #[arg(long, default_value = "50GB", value_parser = parse_size)]
    max_shard_size: u64,
    /// Load model and adapter weights that hold NaN or infinities (refused by default).
    #[arg(long)]
    allow_nonfinite: bool,
    #[command(flatten)]
    quant: QuantArgs,
    /// Over a 4-bit base: write the merged Linear layers 4-bit again (as peft's merge into a
    /// Linear4bit), in a checkpoint transformers loads with its quantization_config.
    #[arg(long)]
    requantize: bool,
}

/// `5GB` / `500MB` / `100KB` (decimal units, as transformers reads them) → bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_uppercase();
    let (number, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len()));
    let n: f64 = number.trim().parse().map_err(|_| format!("not a size: {text}"))?;
    let scale = match unit {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KIB" => 1024.0,
        "MIB" => 1048576.0,
        "GIB" => 1073741824.0,
        _ => return Err(format!("unknown unit in {text} (use KB, MB, GB)")),
    };
    Ok((n * scale) as u64)
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    args.model = hub::local(&args.model, Want::Model)?;
    args.adapter = hub::local(&args.adapter, Want::Adapter)?;
    let device = Device::flex();
    let dir = ModelDir::open(&args.model)?;
    let options =
        LoadOptions { allow_nonfinite: args.allow_nonfinite, quant: args.quant.config()?, ..LoadOptions::default() };
    let quant = options.quantization(&dir.config);
    anyhow::ensure!(
        quant.is_some() || !args.requantize,
        "--requantize writes 4-bit weights again: it needs a 4-bit base (a 4-bit checkpoint, or --load-in-4bit)"
    );
    let mut model = dir.load(&device, &options)?;
    let (_, report) = load_adapter(&mut model, &args.adapter, &device, args.allow_nonfinite)?;
    let requantize = quant.as_ref().filter(|_| args.requantize);
    if let (Some(q), None) = (&quant, requantize) {
        println!(
            "note: the base is 4-bit ({}); the merged model is written dequantized in f32, as transformers' \
             dequantize() gives it (--requantize writes it 4-bit)",
            q.bnb_4bit_quant_type
        );
    }
    save_merged(&model, &args.model, &args.output, args.max_shard_size, requantize)?;
    println!(
        "merged {} LoRA layers{} into {}",
        report.targeted.len(),
        if report.saved.is_empty() { String::new() } else { format!(" and {}", report.saved.join(", ")) },
        args.output.display()
    );
    Ok(())
}
