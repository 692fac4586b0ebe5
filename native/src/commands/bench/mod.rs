//! `ember bench`: speed and memory on random weights of a named shape, so no checkpoint is
//! needed. Reported figures are medians over timed runs after a warm-up run.

mod generate;
mod kernels;
mod train;

use std::path::Path;
use std::time::Instant;

use ember_core::BloomConfig;

use crate::device::DeviceArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Prefill and decode throughput of greedy generation with the KV cache.
    Generate(generate::Args),
    /// LoRA training throughput and peak memory (r=8 on query_key_value, AdamW).
    Train(train::Args),
    /// Each fused kernel against the plain burn computation: time and memory kept for backward.
    Kernels(kernels::Args),
    /// Time and peak memory of loading a model directory (the model kept in f32).
    Load(LoadArgs),
}

#[derive(clap::Args)]
struct LoadArgs {
    /// Hugging Face model directory, or a Hub id (downloaded before the clock starts).
    #[arg(long)]
    model: std::path::PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// End with one JSON line of the results.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        What::Generate(a) => generate::run(a),
        What::Train(a) => train::run(a),
        What::Kernels(a) => kernels::run(a),
        What::Load(a) => bench_load(a),
    }
}

fn bench_load(args: LoadArgs) -> anyhow::Result<()> {
    let model = crate::hub::local(&args.model, crate::hub::Want::Model)?;
    let dir = ember_core::checkpoint::ModelDir::open(&model)?;
    let selected = args.device.select()?;
    let start = Instant::now();
    let model = dir.load_model(&selected.device)?;
    selected.device.sync().map_err(|e| ember_core::error::device_failure("loading", &format!("{e:?}")))?;
    let seconds = start.elapsed().as_secs_f64();
    let model_mb = ember_core::model::ModelShape::of_config(&dir.config).base_params() as f64 * 4.0 / 1048576.0;
    let peak = peak_rss_mb();
    println!(
        "loaded {} ({} parameters) on {} in {seconds:.1} s",
        args.model.display(),
        ember_core::text::thousands(ember_core::model::ModelShape::of_config(&dir.config).base_params()),
        selected.description
    );
    println!("model in memory (f32): {model_mb:.0} MiB; peak RSS: {peak:.0} MiB ({:.2}x)", peak / model_mb);
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "load_s": seconds, "model_mb": model_mb, "peak_rss_mb": peak, "ratio": peak / model_mb })
        );
    }
    drop(model);
    Ok(())
}

pub fn shape(name: &str) -> anyhow::Result<BloomConfig> {
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

/// The human-readable result table: (metric, value, decimals) per row.
pub fn print_table(rows: &[(&str, f64, usize)]) {
    println!("{:<26} {:>12}", "metric", "value");
    for (name, value, decimals) in rows {
        println!("{name:<26} {value:>12.decimals$}");
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB; NaN where unavailable.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
