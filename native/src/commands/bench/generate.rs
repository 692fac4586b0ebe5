//! `ember bench generate`: prefill and decode speed of greedy generation with the KV cache.

use std::time::Instant;

use ember_core::checkpoint::random_model;
use ember_core::generate::{argmax, Decoder};

use super::{median, peak_rss_mb, print_table, shape};
use crate::device::Placement;

#[derive(clap::Args)]
pub struct Args {
    /// bloom-560m, bloom-1b1, bloom-1b4, tiny, or a path to a config.json.
    #[arg(long, default_value = "bloom-560m")]
    shape: String,
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Timed runs (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[command(flatten)]
    placement: Placement,
    /// End with one JSON line of the results.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = shape(&args.shape)?;
    let selected = args.placement.select()?;
    crate::device::doing(format!(
        "benchmarking generation on {} ({} prompt tokens, base weights {})",
        selected.description, args.prompt_len, args.placement.dtype
    ));
    eprintln!(
        "device: {}\nshape: {} ({} parameters, random weights)",
        selected.description,
        args.shape,
        ember_core::text::thousands(ember_core::model::ModelShape::of_config(&config).base_params())
    );
    let mut model = random_model(&config, &selected.device, 0, &args.placement.load_options()?);
    model.kernels = args.placement.kernels;
    let prompt: Vec<u32> = (0..args.prompt_len).map(|i| 4 + (i * 7919 % (config.vocab_size - 4)) as u32).collect();

    let mut prefill_s = Vec::new();
    let mut step_s = Vec::new();
    for run in 0..=args.repeats {
        let mut decoder = Decoder::new(&model, &selected.device);
        let start = Instant::now();
        let mut logits = decoder.prefill(std::slice::from_ref(&prompt), 3)?;
        let prefill = start.elapsed().as_secs_f64();
        let mut steps = Vec::new();
        for _ in 0..args.new_tokens {
            let start = Instant::now();
            logits = decoder.step(&[argmax(&logits)])?;
            steps.push(start.elapsed().as_secs_f64());
        }
        if run > 0 {
            prefill_s.push(prefill);
            step_s.extend(steps);
        }
    }
    let prefill = median(&mut prefill_s);
    let step = median(&mut step_s);
    let prefill_tps = args.prompt_len as f64 / prefill;
    let decode_tps = 1.0 / step;
    let peak_rss_mb = peak_rss_mb();
    print_table(&[
        ("prefill tokens/s", prefill_tps, 1),
        ("decode tokens/s", decode_tps, 2),
        ("prefill median (ms)", prefill * 1e3, 1),
        ("decode step median (ms)", step * 1e3, 1),
        ("peak RSS (MiB)", peak_rss_mb, 0),
    ]);
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "prefill_tokens_per_s": prefill_tps, "decode_tokens_per_s": decode_tps, "peak_rss_mb": peak_rss_mb,
                                "shape": args.shape, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "dtype": args.placement.dtype.to_string(), "kernels": args.placement.kernels.to_string(), "device": selected.description })
        );
    }
    Ok(())
}
