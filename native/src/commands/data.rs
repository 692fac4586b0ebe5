use std::path::PathBuf;
use std::time::Instant;

use ember_core::checkpoint::ModelDir;
use ember_core::tokenizer::Tokenizer;

use super::bench::peak_rss_mb;
use super::data_args::DataArgs;
use ember_core::text::thousands as with_commas;

use crate::hub::{self, Want};

#[derive(clap::Args)]
pub struct Args {
    /// Model directory (or Hub id, org/name[@revision]) whose tokenizer to use.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// How many examples to print.
    #[arg(long, default_value_t = 3)]
    show: usize,
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    args.model = hub::local(&args.model, Want::Model)?;
    let dir = ModelDir::open(&args.model)?;
    let tokenizer = Tokenizer::open(&args.model, &dir.config)?;
    let start = Instant::now();
    let dataset = args.data.load(&tokenizer)?;
    let seconds = start.elapsed().as_secs_f64();

    for i in 0..args.show.min(dataset.len()) {
        let e = dataset.get(i);
        let prompt = tokenizer.decode(&e.input_ids[..e.prompt_len], false)?;
        let response = tokenizer.decode(&e.input_ids[e.prompt_len..], false)?;
        println!(
            "── example {i} ({} tokens{}) ── [masked prompt] then trained response:",
            e.len(),
            if e.truncated { ", truncated" } else { "" }
        );
        println!("[{prompt}]{response}\n");
    }
    let s = dataset.stats();
    let p: Vec<String> = s.length_percentiles.iter().map(|(p, l)| format!("p{p} {l}")).collect();
    println!("examples:            {}", with_commas(s.examples as u64));
    println!(
        "tokens:              {} ({} label tokens)",
        with_commas(s.tokens as u64),
        with_commas(s.label_tokens as u64)
    );
    println!("lengths:             {}", p.join(", "));
    println!("truncated at {}:    {}", args.data.max_length, with_commas(s.truncated as u64));
    println!("without label token: {} (skipped in training)", with_commas(s.without_labels as u64));
    println!(
        "{} in {seconds:.1} s; peak RSS {:.0} MiB",
        if dataset.from_cache { "loaded from cache" } else { "tokenized" },
        peak_rss_mb()
    );
    Ok(())
}
