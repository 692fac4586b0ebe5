//! `ember bench train`: LoRA training steps on random weights and random tokens, timed as the
//! real trainer runs them (forward, backward, clipping, AdamW), for comparison with
//! `bench/peft_baseline.py` on the same shape, batch, sequence length and dtype.

use std::time::Instant;

use ember_core::checkpoint::random_model;
use ember_core::data::encode::Encoded;
use ember_core::data::TokenizedDataset;
use ember_core::lora::{apply_lora, LoraConfig, LoraSettings};
use ember_core::tokenizer::PaddingSide;
use ember_core::train::{Trainer, TrainingArgs};

use super::{median, peak_rss_mb, print_table, shape};
use crate::device::{self, Placement};

#[derive(clap::Args)]
pub struct Args {
    /// bloom-560m, bloom-1b1, bloom-1b4, tiny, or a path to a config.json.
    #[arg(long, default_value = "bloom-560m")]
    shape: String,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence (every sequence full, every token a label).
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed steps (after --warmup untimed ones).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Keep only each block's input and run the blocks again in the backward pass.
    #[arg(long)]
    gradient_checkpointing: bool,
    #[command(flatten)]
    placement: Placement,
    /// End with one JSON line of the results.
    #[arg(long)]
    json: bool,
}

/// LoRA as the comparisons with peft fix it: r=8 on peft's default target for BLOOM
/// (`query_key_value`), peft's usual alpha and dropout.
fn lora() -> ember_core::Result<LoraConfig> {
    LoraSettings { r: Some(8), lora_alpha: Some(16.0), lora_dropout: Some(0.05), ..LoraSettings::default() }.build(None)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = shape(&args.shape)?;
    let selected = args.placement.select()?;
    let options = args.placement.load_options()?;
    let weights = device::weights_description(args.placement.dtype, options.quant.as_ref());
    crate::device::doing(format!(
        "benchmarking training on {} (batch {} x {} tokens, base weights {weights})",
        selected.description, args.batch, args.seq
    ));
    eprintln!(
        "device: {}\nshape: {} ({} parameters, random weights), batch {} x {} tokens, base weights {}, kernels {}",
        selected.description,
        args.shape,
        ember_core::text::thousands(ember_core::model::ModelShape::of_config(&config).base_params()),
        args.batch,
        args.seq,
        weights,
        args.placement.kernels
    );
    let device = device::training_device(&selected.device);
    let start = Instant::now();
    let mut model = random_model(&config, &device, 0, &options);
    let load_s = start.elapsed().as_secs_f64();
    let load_peak = peak_rss_mb();
    model.kernels = args.placement.kernels;
    let lora = lora()?;
    let report = apply_lora(&mut model, &lora, &device)?;
    eprintln!("{}", report.trainable_line());

    let total = args.warmup + args.steps;
    let vocab = config.vocab_size as u32;
    let data = TokenizedDataset::from_encoded((0..args.batch * total).map(|row| Encoded {
        input_ids: (0..args.seq).map(|i| 4 + ((row * 131 + i) as u32 * 7919) % (vocab - 4)).collect(),
        prompt_len: 0,
        truncated: false,
    }));
    let training = TrainingArgs {
        per_device_train_batch_size: args.batch,
        max_steps: total as i64,
        save_steps: 0,
        shuffle: false,
        gradient_checkpointing: args.gradient_checkpointing,
        ..TrainingArgs::default()
    };
    let mut trainer = Trainer::new(model, lora, training, &data, 3, PaddingSide::Right, &device)?;
    let mut step_s = Vec::new();
    for step in 0..total {
        let start = Instant::now();
        let report = trainer.step(&data)?;
        let seconds = start.elapsed().as_secs_f64();
        eprintln!("step {}: {:.2} s, loss {:.4}", step + 1, seconds, report.loss);
        if step >= args.warmup {
            step_s.push(seconds);
        }
    }
    let timed = step_s.clone();
    let step = median(&mut step_s);
    let tokens_per_s = (args.batch * args.seq) as f64 / step;
    let peak = peak_rss_mb();
    let pool = device::pool_mb(&selected.device).unwrap_or(f64::NAN);
    print_table(&[
        ("training tokens/s", tokens_per_s, 1),
        ("step median (s)", step, 3),
        ("model made (s)", load_s, 1),
        ("peak RSS (MiB)", peak, 0),
        ("peak RSS making the model (MiB)", load_peak, 0),
        ("device pool (MiB)", pool, 0),
    ]);
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "tokens_per_s": tokens_per_s, "step_s_median": step, "step_s": timed, "peak_rss_mb": peak, "load_peak_rss_mb": load_peak, "device_pool_mb": pool, "kernels": args.placement.kernels.to_string(),
                                "shape": args.shape, "batch": args.batch, "seq": args.seq, "dtype": args.placement.dtype.to_string(),
                                "weights": weights, "load_s": load_s, "gradient_checkpointing": args.gradient_checkpointing, "device": selected.description })
        );
    }
    Ok(())
}
