//! `ember bench`: speed and memory on random weights of a named shape, so no checkpoint is
//! needed. Reported figures are medians over timed runs after a warm-up run.

use std::path::Path;
use std::time::Instant;

use ember_core::checkpoint::random_model;
use ember_core::generate::{argmax, Decoder};
use ember_core::BloomConfig;

use crate::device::{self, DeviceChoice};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Prefill and decode throughput of greedy generation with the KV cache.
    Generate(GenerateArgs),
    /// Time and peak memory of loading a model directory (the model kept in f32).
    Load(LoadArgs),
}

#[derive(clap::Args)]
struct LoadArgs {
    /// Hugging Face model directory.
    #[arg(long)]
    model: std::path::PathBuf,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceChoice,
    /// End with one JSON line of the results.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct GenerateArgs {
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
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// End with one JSON line of the results.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        What::Generate(a) => bench_generate(a),
        What::Load(a) => bench_load(a),
    }
}

fn bench_load(args: LoadArgs) -> anyhow::Result<()> {
    let dir = ember_core::checkpoint::ModelDir::open(&args.model)?;
    let selected = device::select(args.device)?;
    let start = Instant::now();
    let model = dir.load_model(&selected.device)?;
    selected.device.sync().map_err(|e| ember_core::error::device_failure("loading", &format!("{e:?}")))?;
    let seconds = start.elapsed().as_secs_f64();
    let model_mb = dir.config.num_parameters() as f64 * 4.0 / 1048576.0;
    let peak = peak_rss_mb();
    println!("loaded {} ({} parameters) on {} in {seconds:.1} s", args.model.display(), super::with_commas(dir.config.num_parameters()), selected.description);
    println!("model in memory (f32): {model_mb:.0} MiB; peak RSS: {peak:.0} MiB ({:.2}x)", peak / model_mb);
    if args.json {
        println!("{}", serde_json::json!({ "load_s": seconds, "model_mb": model_mb, "peak_rss_mb": peak, "ratio": peak / model_mb }));
    }
    drop(model);
    Ok(())
}

fn shape(name: &str) -> anyhow::Result<BloomConfig> {
    if let Some(config) = BloomConfig::named_shape(name) {
        return Ok(config);
    }
    let path = Path::new(name);
    if path.is_file() {
        let text = std::fs::read_to_string(path)?;
        return Ok(BloomConfig::from_json(&text, name)?);
    }
    anyhow::bail!("--shape {name}: not a known shape (bloom-560m, bloom-1b1, bloom-1b4, tiny) nor a config.json file")
}

fn bench_generate(args: GenerateArgs) -> anyhow::Result<()> {
    let config = shape(&args.shape)?;
    let selected = device::select(args.device)?;
    if let Some(n) = &selected.notice {
        eprintln!("note: {n}");
    }
    eprintln!("device: {}\nshape: {} ({} parameters, random weights)", selected.description, args.shape, super::with_commas(config.num_parameters()));
    let model = random_model(&config, &selected.device, 0);
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
    println!("{:<26} {:>12}", "metric", "value");
    println!("{:<26} {:>12.1}", "prefill tokens/s", prefill_tps);
    println!("{:<26} {:>12.2}", "decode tokens/s", decode_tps);
    println!("{:<26} {:>12.1}", "prefill median (ms)", prefill * 1e3);
    println!("{:<26} {:>12.1}", "decode step median (ms)", step * 1e3);
    println!("{:<26} {:>12.0}", "peak RSS (MiB)", peak_rss_mb);
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "prefill_tokens_per_s": prefill_tps, "decode_tokens_per_s": decode_tps, "peak_rss_mb": peak_rss_mb,
                                "shape": args.shape, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "device": selected.description })
        );
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB; NaN where unavailable.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
